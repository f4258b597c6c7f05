package plugin

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/docker/cli/cli/command"
	"github.com/spf13/cobra"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/restore"
	"github.com/docker-devmapper/docker-devmapper/metadata/spacemap"
	"github.com/docker-devmapper/docker-devmapper/metadata/thin"
	"github.com/docker-devmapper/docker-devmapper/metadata/xml"
	"github.com/docker-devmapper/docker-devmapper/plugin/engine"
)

type restoreOptions struct {
	input, output string
	size          int64
	force, quiet  bool
	// Overrides for values the XML lacks or gets wrong (a snapshot's dump
	// has nr_data_blocks 0).
	transactionID, nrDataBlocks uint64
	dataBlockSize               uint32
	set                         func(name string) bool
}

func newRestoreCommand(dockerCLI command.Cli) *cobra.Command {
	var opts restoreOptions
	cmd := &cobra.Command{
		Use:   "restore -i XML -o OUTPUT [OPTIONS]",
		Short: "Write fresh thin-pool metadata from thin_dump XML",
		Long: `Write fresh dm-thin pool metadata from XML: what thin_dump 0.9.0 or 1.x prints
(1.x's shared <def>/<ref> leaves are written once and shared again), or what
'docker devmapper dump' prints. Trees are built bottom-up and packed, both
space maps are counted exactly, and the superblock is written last.

The output is a file or a block device. An existing output keeps its size
(the size sets how many metadata blocks the pool has); a new file is made
--size bytes large, or twice what the XML needs. An output that already
holds thin metadata is refused without --force: restoring over a pool's
live metadata throws that metadata away. A file is written beside the
output and renamed over it once complete and synced, so a failure leaves
the old file, or no file, behind. A device is written in place.

Bad XML stops the restore with the line number of the problem.

` + exitCodesHelp,
		Example: `  # turn a dump back into metadata, in a new 64 MiB file
  docker devmapper restore -i pool.xml -o pool-meta.img --size 64MiB

  # restore onto the pool's (inactive) metadata device, replacing what it held
  docker devmapper restore -i pool.xml -o /dev/mapper/docker-thinpool_tmeta --force

  # restore a dump of the held snapshot, which lacks the data device's size
  docker devmapper restore -i snap.xml -o meta.img --nr-data-blocks 65536`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			opts.set = func(name string) bool { return cmd.Flags().Changed(name) }
			if opts.input == "" || opts.output == "" {
				return usageError(cmd, "both -i XML and -o OUTPUT are needed")
			}
			return runRestore(cmd.Context(), dockerCLI, opts)
		},
		DisableFlagsInUseLine: true,
	}
	flags := cmd.Flags()
	flags.StringVarP(&opts.input, "input", "i", "", "Read this XML file")
	flags.StringVarP(&opts.output, "output", "o", "", "Write the metadata to this file or device")
	flags.Var((*sizeFlag)(&opts.size), "size", "Size of a new output file (bytes, or with a unit: 64MiB, 1GiB)")
	flags.BoolVarP(&opts.force, "force", "f", false, "Overwrite an output that already holds thin metadata")
	flags.Uint64Var(&opts.transactionID, "transaction-id", 0, "Use this transaction id instead of the XML's")
	flags.Uint32Var(&opts.dataBlockSize, "data-block-size", 0, "Use this data block size (sectors) instead of the XML's")
	flags.Uint64Var(&opts.nrDataBlocks, "nr-data-blocks", 0, "Use this number of data blocks instead of the XML's")
	addQuietFlag(flags, &opts.quiet)
	return cmd
}

func runRestore(ctx context.Context, dockerCLI command.Cli, opts restoreOptions) error {
	in, err := os.Open(opts.input)
	if err != nil {
		return operational(fmt.Errorf("cannot open the XML: %w", err), "check the path given to -i", opts.quiet)
	}
	defer in.Close()

	out, err := openRestoreOutput(in, opts)
	if err != nil {
		return err
	}
	defer out.abort()

	rv := &restoreVisitor{ctx: ctx, w: out.f, size: out.size, opts: opts}
	if err := xml.Read(in, rv); err != nil {
		if errors.Is(err, context.Canceled) {
			return status(ExitCancelled, err, "", opts.quiet)
		}
		hint := "nothing was written to " + opts.output
		if out.device {
			hint = opts.output + " is a device written in place: it now holds no valid metadata (its superblock was cleared first)"
		}
		if errors.Is(err, restore.ErrNoSpace) {
			hint = "give a larger --size, or restore onto a larger device; " + hint
		}
		return operational(fmt.Errorf("%s: %w", opts.input, err), hint, opts.quiet)
	}
	if rv.r == nil {
		return operational(fmt.Errorf("%s: no <superblock> element", opts.input), "", opts.quiet)
	}
	if err := out.commit(); err != nil {
		return operational(err, "", opts.quiet)
	}
	if !opts.quiet {
		fmt.Fprintf(dockerCLI.Out(), "restored %d devices, %d mappings into %s (%d metadata blocks)\n",
			rv.devices, rv.mappings, opts.output, rv.r.NrMetadataBlocks())
	}
	return nil
}

// restoreOutput is where a restore writes: a temporary file beside the
// output, renamed over it on commit, or the output device itself.
type restoreOutput struct {
	f      *os.File
	name   string
	size   int64
	device bool
	done   bool
}

func openRestoreOutput(in *os.File, opts restoreOptions) (*restoreOutput, error) {
	o := &restoreOutput{name: opts.output, size: opts.size}
	st, err := os.Stat(opts.output)
	switch {
	case err == nil && st.Mode()&os.ModeDevice != 0:
		o.device = true
	case err == nil && !st.Mode().IsRegular():
		return nil, operational(fmt.Errorf("%s is neither a file nor a block device", opts.output), "", opts.quiet)
	case err != nil && !errors.Is(err, os.ErrNotExist):
		return nil, operational(fmt.Errorf("cannot look at the output: %w", err), "", opts.quiet)
	}
	if err == nil {
		if a, e := in.Stat(); e == nil && os.SameFile(a, st) {
			return nil, operational(fmt.Errorf("-o %s is the XML being read", opts.output), "", opts.quiet)
		}
		held, size, err := holdsMetadata(opts.output)
		if err != nil {
			return nil, operational(err, "", opts.quiet)
		}
		if held && !opts.force {
			return nil, operational(fmt.Errorf("%s already holds thin-pool metadata", opts.output),
				"restoring replaces it; if that is what you want, add --force (keep a copy first)", opts.quiet)
		}
		if o.size == 0 {
			o.size = size
		}
	}
	if o.size == 0 {
		need, err := estimateSize(opts.input)
		if err != nil {
			return nil, operational(fmt.Errorf("%s: %w", opts.input, err), "nothing was written to "+opts.output, opts.quiet)
		}
		o.size = need
	}
	if o.device {
		f, err := os.OpenFile(opts.output, os.O_WRONLY|os.O_EXCL, 0)
		if err != nil {
			return nil, operational(fmt.Errorf("cannot open %s for writing: %w", opts.output, err),
				"a device that is busy is in use by an active pool: stop docker and remove the pool with 'dmsetup remove' first", opts.quiet)
		}
		o.f = f
		return o, nil
	}
	f, err := os.CreateTemp(filepath.Dir(opts.output), "."+filepath.Base(opts.output)+".*.tmp")
	if err != nil {
		return nil, operational(fmt.Errorf("cannot create the output: %w", err), "", opts.quiet)
	}
	if err := f.Truncate(o.size); err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, operational(fmt.Errorf("cannot size the output: %w", err), "", opts.quiet)
	}
	o.f = f
	return o, nil
}

// commit syncs the new metadata and puts it in place.
func (o *restoreOutput) commit() error {
	if err := o.f.Sync(); err != nil {
		return fmt.Errorf("cannot write the output: %w", err)
	}
	o.done = true
	if o.device {
		return o.f.Close()
	}
	if err := finishOutput(o.f, o.name); err != nil {
		return err
	}
	if d, err := os.Open(filepath.Dir(o.name)); err == nil {
		_ = d.Sync() // the rename itself must survive a crash
		d.Close()
	}
	return nil
}

// abort drops an unfinished temporary file.
func (o *restoreOutput) abort() {
	if o.done {
		return
	}
	o.f.Close()
	if !o.device {
		os.Remove(o.f.Name())
	}
}

// holdsMetadata reports whether path starts with a valid thin superblock,
// and its size.
func holdsMetadata(path string) (bool, int64, error) {
	f, err := block.Open(path)
	if err != nil {
		return false, 0, fmt.Errorf("cannot read the output: %w", err)
	}
	defer f.Close()
	if f.Len() == 0 {
		return false, f.Size(), nil
	}
	buf := make([]byte, block.Size)
	if err := f.ReadRaw(buf, 0); err != nil {
		return false, 0, err
	}
	if bytes.Count(buf, []byte{0}) == len(buf) {
		return false, f.Size(), nil
	}
	return block.Verify(buf, 0, block.Superblock) == nil, f.Size(), nil
}

// estimateSize reads the XML once to count what it holds and returns
// twice the metadata it needs (at least 8 MiB): the pool needs free
// metadata blocks to work in once the kernel takes it over.
func estimateSize(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var c xmlCounter
	if err := xml.Read(f, &c); err != nil {
		return 0, err
	}
	leaves := c.mappings/168 + c.trees
	blocks := leaves + leaves/100 + 3*c.trees + spacemap.BitmapsFor(c.nrData) + 64
	blocks = blocks * 2 * 5 / 4
	size := max(int64(blocks)*block.Size, 8<<20)
	return (size + 1<<20 - 1) &^ (1<<20 - 1), nil
}

// xmlCounter counts what an XML document holds.
type xmlCounter struct {
	mappings, trees, nrData uint64
}

func (c *xmlCounter) Superblock(sb xml.Superblock) error {
	c.nrData = sb.NrDataBlocks
	return nil
}
func (c *xmlCounter) BeginDevice(thin.DevID, thin.Details) error { c.trees++; return nil }
func (c *xmlCounter) Run(_, _, n uint64, _ uint32) error         { c.mappings += n; return nil }
func (c *xmlCounter) EndDevice() error                           { return nil }
func (c *xmlCounter) BeginDef(string) error                      { c.trees++; return nil }
func (c *xmlCounter) EndDef() error                              { return nil }
func (c *xmlCounter) Ref(string) error                           { return nil }
func (c *xmlCounter) End() error                                 { return nil }

// restoreVisitor feeds what xml.Read finds into a Restorer, created when
// the superblock element arrives.
type restoreVisitor struct {
	ctx      context.Context
	w        io.WriterAt
	size     int64
	opts     restoreOptions
	r        *restore.Restorer
	devices  int
	mappings uint64 // as the details say; Restorer.End checks them
	runs     uint64
}

func (v *restoreVisitor) Superblock(sb xml.Superblock) error {
	o := restore.Options{Time: sb.Time, TransactionID: sb.TransactionID, Flags: sb.Flags, Version: sb.Version,
		DataBlockSize: sb.DataBlockSize, NrDataBlocks: sb.NrDataBlocks}
	if v.opts.set("transaction-id") {
		o.TransactionID = v.opts.transactionID
	}
	if v.opts.set("data-block-size") {
		o.DataBlockSize = v.opts.dataBlockSize
	}
	if v.opts.set("nr-data-blocks") {
		o.NrDataBlocks = v.opts.nrDataBlocks
	}
	r, err := restore.New(v.w, v.size, o)
	if err != nil {
		return err
	}
	v.r = r
	return nil
}

func (v *restoreVisitor) BeginDevice(id thin.DevID, d thin.Details) error {
	v.devices++
	v.mappings += d.MappedBlocks
	return v.r.BeginDevice(id, d)
}

func (v *restoreVisitor) Run(origin, data, n uint64, time uint32) error {
	if v.runs++; v.runs%4096 == 0 {
		if err := v.ctx.Err(); err != nil {
			return err
		}
	}
	return v.r.Run(origin, data, n, time)
}

func (v *restoreVisitor) EndDevice() error           { return v.r.EndDevice() }
func (v *restoreVisitor) BeginDef(name string) error { return v.r.BeginDef(name) }
func (v *restoreVisitor) EndDef() error              { return v.r.EndDef() }
func (v *restoreVisitor) Ref(name string) error      { return v.r.Ref(name) }
func (v *restoreVisitor) End() error                 { return v.r.End() }

// sizeFlag reads sizes such as 64MiB, 1GiB, 8388608.
type sizeFlag int64

func (s *sizeFlag) String() string {
	if *s == 0 {
		return ""
	}
	return fmt.Sprint(int64(*s))
}
func (s *sizeFlag) Type() string { return "size" }
func (s *sizeFlag) Set(v string) error {
	n, err := engine.ParseSize(v)
	if err != nil {
		return err
	}
	if n < block.Size {
		return fmt.Errorf("%q is smaller than one 4 KiB metadata block", v)
	}
	*s = sizeFlag(int64(n))
	return nil
}
