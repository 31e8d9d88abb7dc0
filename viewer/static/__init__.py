"""Static viewer assets (a package only so installs ship these files)."""
