package dockerroot

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
)

// TransactionFile is where docker keeps its open transaction, relative to
// the data root.
const TransactionFile = "devicemapper/metadata/transaction-metadata"

// openTransactionField is the one field a Change rewrites.
const openTransactionField = "open_transaction_id"

// Errors of Apply; each says what to do next.
var (
	// ErrStale: a record no longer says what the plan was made from.
	ErrStale = errors.New("docker's records changed since they were read (is docker running?): stop docker, then read the records and plan again")
	// ErrBackupExists: Apply never replaces a backup.
	ErrBackupExists = errors.New("a backup of this record already exists in the backup directory: give another directory")
)

// Change is one rewrite of a docker record that Apply makes: Field of
// File goes From one value To another.
type Change struct {
	Kind  Kind   `json:"kind"` // the finding it fixes
	File  string `json:"file"` // relative to the data root
	Field string `json:"field"`
	From  uint64 `json:"from"`
	To    uint64 `json:"to"`
	Why   string `json:"why"`
}

func (c Change) String() string {
	return fmt.Sprintf("%s: %s %d -> %d: %s", c.File, c.Field, c.From, c.To, c.Why)
}

// Left is a finding that no fix changes, with what to do about it.
type Left struct {
	Finding
	Advice string `json:"advice"`
}

// Plan is what fixing docker's records against a pool takes: the
// changes Apply makes, the orphan devices a drop of devices from the
// pool metadata can remove, and the findings left as they are.
type Plan struct {
	Changes []Change `json:"changes"`
	// Orphans are devices in the pool that docker has no record of. Apply
	// does nothing about them: the records need no change, and dropping
	// them from the pool (repair.DropDevices) loses their data, which only
	// the user may decide.
	Orphans []uint32 `json:"orphans"`
	Left    []Left   `json:"left"`
}

// Empty says whether there is nothing to change, drop or report.
func (p Plan) Empty() bool { return len(p.Changes) == 0 && len(p.Orphans) == 0 && len(p.Left) == 0 }

// PlanFixes decides, from what Reconcile finds between docker's records
// and a pool whose transaction id is poolTrans, what can be fixed in the
// records while docker is stopped:
//
//   - rollback, for a device the pool holds: docker would delete it at
//     start-up (processPendingTransaction rolls back every transaction
//     above the pool's). The open transaction id is set to the pool's, so
//     docker finds nothing to roll back and keeps the device. This holds
//     even where docker has no record of the device (it then shows as an
//     orphan, which the user may drop): deleting data is never done for
//     the user. Where the pool does not hold the device, docker's
//     roll-back only removes its record, which is right, and is left to
//     docker.
//   - transaction-behind: docker only logs an error; the open transaction
//     id is set to the pool's all the same, which is what docker records
//     itself after its next transaction.
//   - orphan: listed in Orphans, nothing changed; unless docker's open
//     transaction names the device and the layer store says what uses its
//     hash (docker lost its record of a device in use): that one is Left.
//   - missing, deleted-present, record-ahead: docker still refers to those
//     devices, so nothing is changed; each is Left with what to do.
//
// device_hash and device_id of the transaction record stay as they are.
func PlanFixes(rec *Records, poolTrans uint64, pool []PoolDevice) Plan {
	var p Plan
	inPool := map[uint32]bool{}
	for _, d := range pool {
		inPool[d.ID] = true
	}
	leave := func(f Finding, advice string) { p.Left = append(p.Left, Left{Finding: f, Advice: advice}) }
	for _, f := range Reconcile(rec, poolTrans, pool) {
		id := uint32(0)
		if f.DeviceID != nil {
			id = *f.DeviceID
		}
		switch f.Kind {
		case Orphan:
			if t := rec.Transaction; t != nil && t.DeviceID == id && rec.owner(recordName(t.DeviceHash)) != nil {
				// Docker's record of the device is lost, but its open
				// transaction names the device's hash and the layer
				// store says what uses it: not for dropping.
				f.Hash, f.Owner = t.DeviceHash, rec.owner(recordName(t.DeviceHash))
				leave(f, fmt.Sprintf("not offered for removal: docker's record of it is lost, but its open transaction names it %s, which the layer store says %s uses; docker cannot activate it without the record, so once docker runs, remove %s and create it again, and drop the device after",
					short(recordName(t.DeviceHash)), f.Owner, f.Owner))
				continue
			}
			p.Orphans = append(p.Orphans, id)
		case Rollback:
			t := rec.Transaction
			if !inPool[id] {
				leave(f, "nothing to do: docker removes its record of the device at start-up, which is right, since the pool never got the device")
				continue
			}
			p.Changes = append(p.Changes, Change{Kind: f.Kind, File: TransactionFile, Field: openTransactionField,
				From: t.OpenTransactionID, To: poolTrans,
				Why: fmt.Sprintf("docker would delete device %d (%s) at start-up to roll back transaction %d, which the pool (at %d) does not have; at the pool's transaction id there is nothing to roll back and the device stays",
					id, describe(t.DeviceHash, f.Owner), t.OpenTransactionID, poolTrans)})
		case TransactionBehind:
			t := rec.Transaction
			p.Changes = append(p.Changes, Change{Kind: f.Kind, File: TransactionFile, Field: openTransactionField,
				From: t.OpenTransactionID, To: poolTrans,
				Why: fmt.Sprintf("docker's open transaction %d is below the pool's %d, which docker reports as an error at start-up; docker records the pool's id itself after its next transaction",
					t.OpenTransactionID, poolTrans)})
		default:
			leave(f, advice(f))
		}
	}
	return p
}

// recordName is the name of docker's record file for a device hash: its
// transaction names the base device by the empty hash.
func recordName(hash string) string {
	if hash == "" {
		return "base"
	}
	return hash
}

// advice says what to do about a finding that no fix changes.
func advice(f Finding) string {
	switch f.Kind {
	case Missing:
		switch {
		case f.Owner == nil:
			return "no image or container in docker's layer store uses the device, as far as it says: docker keeps a record that nothing needs, which does no harm"
		case f.Owner.Kind == "base":
			return "docker cannot create image layers without its base device: 'docker devmapper reset --remove-images' starts over with a new pool"
		case f.Owner.Kind == "container" || f.Owner.Kind == "container init":
			return fmt.Sprintf("the container's files are gone from the pool: once docker runs, remove the container with 'docker rm -f %s' and create it again", containerRef(f.Owner))
		default:
			what := "the images that use the layer"
			if f.Owner.Name != "" {
				what = "the images that end with it (" + f.Owner.Name + ")"
			}
			return fmt.Sprintf("the image layer is gone from the pool: once docker runs, remove the containers that use %s, then the images with 'docker rmi', and pull or build them again", what)
		}
	case DeletedPresent:
		return "nothing to do: docker deletes the device itself when its deferred deletion runs after start-up"
	case RecordAhead:
		return "nothing is changed: the pool metadata is older than docker's record, so the device may lack its last writes; once docker runs, check the image or container that uses it"
	}
	return "nothing is changed"
}

func containerRef(o *Owner) string {
	if o.Name != "" {
		return o.Name
	}
	return short(o.ID)
}

// WriteText prints the plan for a person.
func (p Plan) WriteText(w io.Writer) error {
	var b strings.Builder
	for _, c := range p.Changes {
		fmt.Fprintf(&b, "fix: %s\n", c)
	}
	for _, id := range p.Orphans {
		fmt.Fprintf(&b, "orphan: thin device %d is in the pool but docker has no record of it: --remove-orphans drops it from the pool metadata (its data is lost)\n", id)
	}
	for _, l := range p.Left {
		fmt.Fprintf(&b, "left: %s\n  %s\n", l.Message, l.Advice)
	}
	if p.Empty() {
		b.WriteString("docker's records agree with the pool: nothing to fix\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// Apply makes the plan's changes to the records under the docker data
// root, which docker must not be running on. It first reads every file to
// change and makes sure it still says what the plan was made from
// (ErrStale otherwise), then copies each into backupDir, under its path
// relative to the root, written whole and fsynced before anything changes
// (ErrBackupExists where a backup is there already), and then writes each
// change atomically: a temporary file in the same directory, named with a
// leading dot as docker skips, with the original's mode and owner,
// fsynced and renamed over the original, and the directory fsynced.
// Killed at any moment it leaves each record old or new, never a mix.
// With no changes it touches nothing, backupDir included.
func (p Plan) Apply(root, backupDir string) error {
	if len(p.Changes) == 0 {
		return nil
	}
	if backupDir == "" {
		return errors.New("no backup directory given: Apply copies every record it changes there first")
	}
	type edit struct {
		rel      string
		old, new []byte
		st       fs.FileInfo
	}
	var edits []*edit
	byFile := map[string]*edit{}
	for _, c := range p.Changes {
		if c.File != TransactionFile || c.Field != openTransactionField {
			return fmt.Errorf("dockerroot: cannot change %s of %s: only %s of %s is ever fixed", c.Field, c.File, openTransactionField, TransactionFile)
		}
		e := byFile[c.File]
		if e == nil {
			path := filepath.Join(root, filepath.FromSlash(c.File))
			st, err := os.Stat(path)
			if err != nil {
				return err
			}
			if !st.Mode().IsRegular() || st.Size() > maxRecord {
				return fmt.Errorf("%s: not a docker record (a regular file under %d bytes)", path, maxRecord)
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			e = &edit{rel: c.File, old: b, new: b, st: st}
			byFile[c.File] = e
			edits = append(edits, e)
		}
		b, err := setOpenTransaction(e.new, c.From, c.To)
		if err != nil {
			return fmt.Errorf("%s: %w", filepath.Join(root, c.File), err)
		}
		e.new = b
	}
	for _, e := range edits {
		dst := filepath.Join(backupDir, filepath.FromSlash(e.rel))
		if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
			return fmt.Errorf("cannot write the backup: %w", err)
		}
		if _, err := os.Lstat(dst); err == nil {
			return fmt.Errorf("%s: %w", dst, ErrBackupExists)
		}
		if err := writeAtomic(dst, e.old, e.st, true); err != nil {
			return fmt.Errorf("cannot write the backup: %w", err)
		}
	}
	for _, e := range edits {
		if err := writeAtomic(filepath.Join(root, filepath.FromSlash(e.rel)), e.new, e.st, false); err != nil {
			return err
		}
	}
	return nil
}

// transactionRecord is docker's transaction record, fields in the order
// docker's json.Marshal writes them (deviceset.go, type transaction). The
// hash and device id are kept as they were written.
type transactionRecord struct {
	OpenTransactionID uint64          `json:"open_transaction_id"`
	DeviceHash        json.RawMessage `json:"device_hash"`
	DeviceID          json.RawMessage `json:"device_id"`
}

// setOpenTransaction rewrites the open transaction id of the transaction
// record b from `from` to `to`, as docker writes the record: one line of
// compact JSON, no newline. Fields docker does not know are dropped.
func setOpenTransaction(b []byte, from, to uint64) ([]byte, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(b, &fields); err != nil {
		return nil, err
	}
	cur, err := strconv.ParseUint(string(fields[openTransactionField]), 10, 64)
	if err != nil || cur != from {
		return nil, fmt.Errorf("%w (%s is %s, the plan expected %d)", ErrStale, openTransactionField, fields[openTransactionField], from)
	}
	t := transactionRecord{OpenTransactionID: to, DeviceHash: fields["device_hash"], DeviceID: fields["device_id"]}
	if len(t.DeviceHash) == 0 {
		t.DeviceHash = json.RawMessage(`""`)
	}
	if len(t.DeviceID) == 0 {
		t.DeviceID = json.RawMessage(`0`)
	}
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(t); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(out.Bytes(), []byte("\n")), nil
}

// writeAtomic writes b to path through a temporary file beside it, named
// with a leading dot, with like's mode and (when permitted) owner,
// fsynced, then put in place and the directory fsynced. With keep, an
// existing path is never replaced: the file is linked into place, not
// renamed.
func writeAtomic(path string, b []byte, like fs.FileInfo, keep bool) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".fix-*")
	if err != nil {
		return err
	}
	done := false
	defer func() {
		if !done {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Chmod(like.Mode().Perm()); err != nil {
		return err
	}
	if sys, ok := like.Sys().(*syscall.Stat_t); ok {
		tmp.Chown(int(sys.Uid), int(sys.Gid)) // best effort: only root may
	}
	if _, err := tmp.Write(b); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if keep {
		if err := os.Link(tmp.Name(), path); err != nil {
			return err
		}
		os.Remove(tmp.Name())
	} else if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	done = true
	return block.SyncDir(dir)
}
