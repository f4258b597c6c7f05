package check

// Options choose what Run checks.
type Options struct {
	// MetadataSnap checks the trees of the held metadata snapshot instead
	// of the live ones, and skips the space maps (their counts describe the
	// live metadata).
	MetadataSnap bool
	// SkipMappings walks only the details tree and the top level of the
	// mapping tree, and skips the space maps: a quick structural pass.
	SkipMappings bool
	// KeepCounts keeps the recomputed reference counts in the report (see
	// Report.Recount) for a repair to build space maps from. It costs the
	// memory of the counts for as long as the report lives.
	KeepCounts bool
	// Progress, when set, is told how far the check has come. It is called
	// from one goroutine at a time.
	Progress func(phase string, done, total uint64)
}
