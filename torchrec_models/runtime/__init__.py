"""Processes: the process group and its device, local launching through torch elastic, the rank
body with its one-line user errors, and library log noise."""
