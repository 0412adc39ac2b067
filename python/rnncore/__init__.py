"""rnncore: fast CPU recurrent networks."""
