"""The tour's core pages: ``data`` (the data sets) and ``bench`` (a reference backbone's speed).

Each method's page is ``wherewhat/methods/<name>/tour.py``; :mod:`wherewhat.tour` lists them all.
"""
