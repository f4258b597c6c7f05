package dockerroot

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Device is docker's record of one thin device.
type Device struct {
	Hash          string `json:"-"`
	DeviceID      uint32 `json:"device_id"`
	Size          uint64 `json:"size"`
	TransactionID uint64 `json:"transaction_id"`
	Initialized   bool   `json:"initialized"`
	Deleted       bool   `json:"deleted"`
}

// Transaction is docker's record of the transaction it last opened.
type Transaction struct {
	OpenTransactionID uint64 `json:"open_transaction_id"`
	DeviceHash        string `json:"device_hash"`
	DeviceID          uint32 `json:"device_id"`
}

// Owner says what a device holds.
type Owner struct {
	Kind string `json:"kind"` // "base", "image layer", "container", "container init"
	ID   string `json:"id"`   // layer chain id or container id
	// Name: the container's name, or the images whose top layer this is.
	Name string `json:"name,omitempty"`
}

func (o Owner) String() string {
	s := o.Kind
	if o.ID != "" {
		s += " " + short(o.ID)
	}
	if o.Name != "" {
		s += " (" + o.Name + ")"
	}
	return s
}

func short(id string) string {
	id = strings.TrimPrefix(id, "sha256:")
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// Records is what docker keeps under one data root.
type Records struct {
	Root         string
	Devices      []Device // by device id
	NextDeviceID int
	BaseUUID     string
	Transaction  *Transaction     // nil when docker has none open
	Owners       map[string]Owner // by device hash
}

// ByID finds docker's record of thin device id.
func (r *Records) ByID(id uint32) (Device, bool) {
	i, ok := slices.BinarySearchFunc(r.Devices, id, func(d Device, id uint32) int { return cmp.Compare(d.DeviceID, id) })
	if !ok {
		return Device{}, false
	}
	return r.Devices[i], true
}

// ErrNoRecords: the root holds no devicemapper records.
var ErrNoRecords = errors.New("no devicemapper records under the docker root")

// maxRecord bounds one JSON file: docker's are under 200 bytes.
const maxRecord = 1 << 20

func readJSON(path string, v any) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if st.Size() > maxRecord {
		return fmt.Errorf("%s: %d bytes, too large for a docker record", path, st.Size())
	}
	b := make([]byte, st.Size())
	if _, err := f.ReadAt(b, 0); err != nil && st.Size() > 0 {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

func readLine(path string) string {
	b, err := os.ReadFile(path)
	if err != nil || len(b) > maxRecord {
		return ""
	}
	return string(bytes.TrimSpace(b))
}

// Load reads the devicemapper records and the layer store under root.
// Unreadable owner files only leave owners unknown; unreadable device
// records are errors, since a reconcile on half the records would call
// devices orphans that are not.
func Load(root string) (*Records, error) {
	r := &Records{Root: root, Owners: map[string]Owner{}}
	dir := filepath.Join(root, "devicemapper", "metadata")
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s does not exist", ErrNoRecords, dir)
	}
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		name := e.Name()
		if e.IsDir() || strings.HasPrefix(name, ".") || strings.HasSuffix(name, ".migrated") {
			continue
		}
		p := filepath.Join(dir, name)
		switch name {
		case "deviceset-metadata":
			var ds struct {
				NextDeviceID int    `json:"next_device_id"`
				BaseUUID     string `json:"BaseDeviceUUID"`
			}
			if err := readJSON(p, &ds); err != nil {
				return nil, err
			}
			r.NextDeviceID, r.BaseUUID = ds.NextDeviceID, ds.BaseUUID
		case "transaction-metadata":
			var t Transaction
			if err := readJSON(p, &t); err != nil {
				return nil, err
			}
			r.Transaction = &t
		default:
			d := Device{Hash: name}
			if err := readJSON(p, &d); err != nil {
				return nil, err
			}
			r.Devices = append(r.Devices, d)
		}
	}
	slices.SortFunc(r.Devices, func(a, b Device) int {
		return cmp.Or(cmp.Compare(a.DeviceID, b.DeviceID), strings.Compare(a.Hash, b.Hash))
	})
	r.Owners["base"] = Owner{Kind: "base"}
	r.loadOwners()
	return r, nil
}

// loadOwners maps device hashes to image layers and containers from the
// layer store.
func (r *Records) loadOwners() {
	store := filepath.Join(r.Root, "image", "devicemapper")
	images := r.imagesByTopLayer(store)
	layers, _ := os.ReadDir(filepath.Join(store, "layerdb", "sha256"))
	for _, l := range layers {
		hash := readLine(filepath.Join(store, "layerdb", "sha256", l.Name(), "cache-id"))
		if hash != "" {
			r.Owners[hash] = Owner{Kind: "image layer", ID: "sha256:" + l.Name(), Name: strings.Join(images["sha256:"+l.Name()], ", ")}
		}
	}
	mounts, _ := os.ReadDir(filepath.Join(store, "layerdb", "mounts"))
	for _, m := range mounts {
		id := m.Name()
		name := containerName(filepath.Join(r.Root, "containers", id, "config.v2.json"))
		if h := readLine(filepath.Join(store, "layerdb", "mounts", id, "mount-id")); h != "" {
			r.Owners[h] = Owner{Kind: "container", ID: id, Name: name}
		}
		if h := readLine(filepath.Join(store, "layerdb", "mounts", id, "init-id")); h != "" {
			r.Owners[h] = Owner{Kind: "container init", ID: id, Name: name}
		}
	}
}

func containerName(path string) string {
	var c struct{ Name string }
	if readJSON(path, &c) != nil {
		return ""
	}
	return strings.TrimPrefix(c.Name, "/")
}

// imagesByTopLayer names each image after its top layer's chain id: the
// repository tags where there are some, else the short image id.
func (r *Records) imagesByTopLayer(store string) map[string][]string {
	var repos struct {
		Repositories map[string]map[string]string
	}
	_ = readJSON(filepath.Join(store, "repositories.json"), &repos)
	tags := map[string][]string{}
	for _, refs := range repos.Repositories {
		for ref, id := range refs {
			if !strings.Contains(ref, "@") {
				tags[id] = append(tags[id], ref)
			}
		}
	}
	out := map[string][]string{}
	dir := filepath.Join(store, "imagedb", "content", "sha256")
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		var cfg struct {
			RootFS struct {
				DiffIDs []string `json:"diff_ids"`
			} `json:"rootfs"`
		}
		if readJSON(filepath.Join(dir, e.Name()), &cfg) != nil || len(cfg.RootFS.DiffIDs) == 0 {
			continue
		}
		id := "sha256:" + e.Name()
		names := tags[id]
		slices.Sort(names)
		if len(names) == 0 {
			names = []string{short(id)}
		}
		top := ChainID(cfg.RootFS.DiffIDs)
		out[top] = append(out[top], names...)
	}
	for k := range out {
		slices.Sort(out[k])
	}
	return out
}

// ChainID is the layer store's id of the layer stack diffIDs: the first
// diff id, then sha256 of "parent child" for each further layer (the OCI
// image spec's ChainID).
func ChainID(diffIDs []string) string {
	if len(diffIDs) == 0 {
		return ""
	}
	id := diffIDs[0]
	for _, d := range diffIDs[1:] {
		sum := sha256.Sum256([]byte(id + " " + d))
		id = "sha256:" + hex.EncodeToString(sum[:])
	}
	return id
}
