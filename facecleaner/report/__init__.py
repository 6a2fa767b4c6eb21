"""``facecleaner report``: what a person checks before trusting a run, as one folder to open in a browser.

:mod:`.data` reads the scores (and the clean/dropped manifests, when given) into one view of the run: every
row's angle and whether it was kept, and why not; :mod:`.figures` draws the figures and returns the numbers it
plotted (``summary.json`` holds the same); :mod:`.sheets` picks the identities to show and writes their
thumbnails; :mod:`.page` writes the self-contained ``index.html``. :mod:`facecleaner.jobs.report` ties them
together and publishes the folder.
"""
