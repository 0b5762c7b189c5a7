"""What runs the method: settings and input checks, the resumable work folder and fingerprints, sharding,
progress, the result file and its report (with the paired tests), and the `pss` and `train` commands."""
