"""One module per command's orchestration; :mod:`facecleaner.api` lists them as the public entry points."""
