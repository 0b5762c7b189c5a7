"""The cross-model study (`minipss study`) and the comparison of result files (`minipss compare`)."""
