"""The web surfaces: the JSON API, the running-tasks indicator and the staff monitor."""
