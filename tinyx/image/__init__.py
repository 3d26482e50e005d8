"""The Tinyx image builder: an application -> a minimal initramfs for the platform kernel.

One job per module: recipe (what to build), base (debootstrap), install (apt in an
overlay chroot), prune, elfdeps (the NEEDED closure), owners (which package a file came
from), busybox, appconf, assemble (the image tree), pack (cpio + compression), output
(the image folder and its report), store (list/rm), build (the pipeline). See
docs/tinyx.md, "Building an image".
"""
