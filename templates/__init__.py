"""The default model card templates, shipped in the wheel as smpack.templates.

A regular package (not a namespace one) so that editable installs can find it too:
setuptools' editable finder only maps sub-packages that have an __init__.py.
"""
