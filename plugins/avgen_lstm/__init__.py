"""LSTM generators: owens_lstm, can_lstm, and their losses (issue 7)."""
