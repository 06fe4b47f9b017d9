"""graphprune."""
