package repair

// AsDevice makes RepairFile and DropFile take o.Input, a regular file in
// tests, for a block device: opened exclusively and, in place, rewritten
// as a device is rather than replaced by rename.
func AsDevice(o FileOptions) FileOptions {
	o.device = true
	return o
}
