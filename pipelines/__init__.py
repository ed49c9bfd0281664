"""lakhflow's library: one module per DVC stage, plus config, MIDI I/O, the model and plots."""

__version__ = "0.1.0"
