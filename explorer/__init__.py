"""rhox explorer: the Panel app."""
