"""Using the registered models: index a video collection, search it by text, ask about a clip, serve a page."""
