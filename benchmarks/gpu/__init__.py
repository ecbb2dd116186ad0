"""The GPU acceptance run (run.py, run.sh) and the wheel folder it installs from (wheels.py, wheels.sh): see README.md."""
