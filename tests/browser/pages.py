"""Helpers the browser tests share."""

#: Run on a loaded page; ``SAME_PAGE`` still true later means the page was never reloaded.
MARK = "window.__loadedOnce = true"
SAME_PAGE = "() => window.__loadedOnce === true"
