"""The one-file build's entry point (packaging/ccproxyd.spec): the same command as the installed ``ccproxyd``."""

from ccproxyd import frozen
from ccproxyd.cli import main

frozen.use_system_ca_bundle()
main(prog_name="ccproxyd")  # not the file's name (ccproxyd-0.1.0-linux-x86_64) in usage and --version
