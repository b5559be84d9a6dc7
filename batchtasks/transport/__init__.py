"""The broker side: building and publishing run messages, and a faster Redis transport."""
