"""The Tinyx platform kernel: linux-source-6.1, tinyconfig + the microvm fragment, cached by content hash."""
