"""The site registry: push a release's images into it, and install hosts from it.

``reference`` maps release names to registry repositories, ``client`` speaks
the registry API, ``blobs`` encodes layers for the wire, ``push`` streams a
verified archive into the registry, ``pull`` has an engine take a release's
images from it, ``access`` turns command-line options into a client.
"""
