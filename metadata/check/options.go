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
	// Progress, when set, is told how far the check has come. It is called
	// from one goroutine at a time.
	Progress func(phase string, done, total uint64)
}
