"""Jobs: the pure state machine (states), its persistence (db) and the manager (the only I/O)."""
