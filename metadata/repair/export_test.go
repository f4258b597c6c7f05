package repair

// AsDevice makes RepairFile and DropFile take o.Input, a regular file in
// tests, for a block device: opened exclusively and, in place, rewritten
// as a device is rather than replaced by rename.
func AsDevice(o FileOptions) FileOptions {
	o.device = true
	return o
}

// ValuesFile is what --values-from reads of the file at path: its kind
// and the pool values it gives.
type ValuesFile struct {
	Kind          string
	TransactionID uint64
	DataBlockSize uint32
	NrDataBlocks  uint64
	Time          uint32
}

// ReadValuesFile reads path as --values-from does.
func ReadValuesFile(path string) (ValuesFile, error) {
	fv, err := readValuesFile(path)
	if err != nil {
		return ValuesFile{}, err
	}
	return ValuesFile{fv.kind, fv.transactionID, fv.dataBlockSize, fv.nrData, fv.time}, nil
}
