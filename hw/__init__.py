"""binforge stage package."""
