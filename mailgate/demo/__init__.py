"""Demo interviews served by `mailgate demo`."""
