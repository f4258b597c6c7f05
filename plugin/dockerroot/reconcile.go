package dockerroot

import (
	"cmp"
	"fmt"
	"slices"
)

// PoolDevice is what Reconcile needs of a device in the pool's metadata.
type PoolDevice struct {
	ID            uint32
	TransactionID uint64 // the pool's transaction id when it was created
}

// Kind names a reconcile finding.
type Kind string

const (
	// Orphan: in the pool, unknown to docker. Its space is leaked.
	Orphan Kind = "orphan"
	// Missing: docker has a record of it, the pool does not hold it.
	Missing Kind = "missing"
	// DeletedPresent: docker marked it deleted; it is still in the pool.
	DeletedPresent Kind = "deleted-present"
	// Rollback: at start-up docker will delete a device, because the
	// pool's transaction id is below the transaction docker opened.
	Rollback Kind = "rollback"
	// TransactionBehind: docker's open transaction is below the pool's;
	// docker logs an error at start-up and goes on.
	TransactionBehind Kind = "transaction-behind"
	// RecordAhead: docker recorded a device in a transaction the pool
	// does not have (the metadata is older than docker's records).
	RecordAhead Kind = "record-ahead"
)

// Finding is one difference between docker's records and the pool.
type Finding struct {
	Kind     Kind    `json:"kind"`
	Severe   bool    `json:"severe"` // docker will lose or cannot use data
	DeviceID *uint32 `json:"device_id,omitempty"`
	Hash     string  `json:"hash,omitempty"`
	Owner    *Owner  `json:"owner,omitempty"`
	Message  string  `json:"message"`
}

func (f Finding) String() string {
	s := "warning"
	if f.Severe {
		s = "error"
	}
	return s + ": docker records: " + f.Message
}

// Reconcile compares docker's records with the devices of a pool whose
// superblock transaction id is poolTrans. Findings come sorted by device.
func Reconcile(rec *Records, poolTrans uint64, pool []PoolDevice) []Finding {
	var out []Finding
	inPool := map[uint32]bool{}
	for _, d := range pool {
		inPool[d.ID] = true
	}
	known := map[uint32]bool{}
	for _, d := range rec.Devices {
		known[d.DeviceID] = true
	}
	for _, d := range pool {
		if !known[d.ID] {
			id := d.ID
			out = append(out, Finding{Kind: Orphan, DeviceID: &id,
				Message: fmt.Sprintf("thin device %d is in the pool but docker has no record of it: its space is leaked", d.ID)})
		}
	}
	for _, d := range rec.Devices {
		id, owner := d.DeviceID, rec.owner(d.Hash)
		switch {
		case !inPool[d.DeviceID] && !d.Deleted && !(rec.Transaction != nil && rec.Transaction.DeviceID == d.DeviceID && rec.Transaction.OpenTransactionID > poolTrans):
			// Severe when an image or container needs it: a record that
			// nothing uses harms nothing.
			out = append(out, Finding{Kind: Missing, Severe: owner != nil, DeviceID: &id, Hash: d.Hash, Owner: owner,
				Message: fmt.Sprintf("docker's device %d (%s) is not in the pool: docker cannot activate it", d.DeviceID, describe(d.Hash, owner))})
		case inPool[d.DeviceID] && d.Deleted:
			out = append(out, Finding{Kind: DeletedPresent, DeviceID: &id, Hash: d.Hash, Owner: owner,
				Message: fmt.Sprintf("device %d (%s) is marked deleted but still in the pool: docker deletes it once deferred deletion runs", d.DeviceID, describe(d.Hash, owner))})
		}
		if d.TransactionID > poolTrans && inPool[d.DeviceID] {
			out = append(out, Finding{Kind: RecordAhead, Severe: true, DeviceID: &id, Hash: d.Hash, Owner: owner,
				Message: fmt.Sprintf("docker recorded device %d (%s) at transaction %d, after the pool's %d: the pool metadata is older than docker's records", d.DeviceID, describe(d.Hash, owner), d.TransactionID, poolTrans)})
		}
	}
	if t := rec.Transaction; t != nil {
		id, owner := t.DeviceID, rec.owner(recordName(t.DeviceHash))
		switch {
		case t.OpenTransactionID > poolTrans:
			what := "the device is not in the pool, so only docker's record of it goes"
			if inPool[t.DeviceID] {
				what = "the device IS in the pool: its data will be lost unless docker's transaction-metadata is set back to the pool's transaction id before docker starts"
			}
			out = append(out, Finding{Kind: Rollback, Severe: inPool[t.DeviceID], DeviceID: &id, Hash: t.DeviceHash, Owner: owner,
				Message: fmt.Sprintf("docker will delete device %d (%s) at start-up: its open transaction %d is above the pool's transaction id %d, so docker rolls that transaction back; %s",
					t.DeviceID, describe(t.DeviceHash, owner), t.OpenTransactionID, poolTrans, what)})
		case t.OpenTransactionID < poolTrans:
			out = append(out, Finding{Kind: TransactionBehind, DeviceID: &id, Hash: t.DeviceHash, Owner: owner,
				Message: fmt.Sprintf("docker's open transaction %d is below the pool's %d: docker logs an error at start-up and goes on", t.OpenTransactionID, poolTrans)})
		}
	}
	slices.SortStableFunc(out, func(a, b Finding) int {
		return cmp.Compare(devKey(a.DeviceID), devKey(b.DeviceID))
	})
	return out
}

func devKey(p *uint32) int64 {
	if p == nil {
		return -1
	}
	return int64(*p)
}

func (r *Records) owner(hash string) *Owner {
	if o, ok := r.Owners[hash]; ok {
		return &o
	}
	return nil
}

func describe(hash string, o *Owner) string {
	if o != nil {
		if o.Kind == "base" {
			return "the base device"
		}
		return o.String()
	}
	if hash == "" {
		return "no hash"
	}
	return "hash " + short(hash)
}
