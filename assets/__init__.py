"""Bundled data of rhox (``rhox.assets``): the default SiGeSn model and its datasets.

Made by ``make assets``; see README.md beside this file. Found from a wheel install and from a
checkout alike through :func:`rhox.engine.model.asset_path`.
"""
