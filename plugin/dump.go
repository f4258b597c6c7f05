package plugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"github.com/docker/cli/cli"
	"github.com/docker/cli/cli/command"
	"github.com/spf13/cobra"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
	"github.com/docker-devmapper/docker-devmapper/metadata/thin"
	"github.com/docker-devmapper/docker-devmapper/metadata/xml"
)

type dumpOptions struct {
	metadata     string // file or device to read
	output       string // file to write; "" for stdout
	format       string
	snap         snapFlag
	devIDs       []uint
	skipMappings bool
}

func newDumpCommand(dockerCLI command.Cli) *cobra.Command {
	var opts dumpOptions
	cmd := &cobra.Command{
		Use:   "dump --metadata FILE [OPTIONS]",
		Short: "Print thin-pool metadata as thin_dump XML",
		Long: `Print the devices and mappings of dm-thin pool metadata as the XML that
thin_dump 0.9.0 prints, byte for byte, so thin_restore and every tool that
reads thin_dump output can use it. --format human_readable prints 0.9.0's
text form; --format json the same content as JSON.

The metadata is opened read-only. Damaged metadata is dumped as far as it
can be read: each part left out is named on stderr, and the command exits
with 4. With -o, the output file appears only when the dump is complete or
lost only damaged parts; nothing is left behind on other errors.

` + exitCodesHelp,
		Example: `  # dump a copy of the metadata device
  docker devmapper dump --metadata /var/tmp/pool-meta.img -o pool.xml

  # the held metadata snapshot of a live pool's metadata device
  docker devmapper dump -m --metadata /dev/mapper/docker-thinpool_tmeta

  # the snapshot copy of the superblock at block 29, devices 1 and 5 only
  docker devmapper dump --metadata-snap=29 --dev-id 1 --dev-id 5 --metadata pool-meta.img

  # devices only, as JSON
  docker devmapper dump --skip-mappings --format json --metadata pool-meta.img`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDump(cmd.Context(), dockerCLI, opts)
		},
		DisableFlagsInUseLine: true,
	}
	flags := cmd.Flags()
	flags.StringVar(&opts.metadata, "metadata", "", "Read this metadata file or device")
	flags.StringVarP(&opts.output, "output", "o", "", "Write to this file instead of stdout")
	flags.StringVarP(&opts.format, "format", "f", "xml", "Output format: xml, human_readable or json")
	flags.VarP(&opts.snap, "metadata-snap", "m", "Dump the held metadata snapshot (-m), or the superblock copy at a block (-m=29, --metadata-snap=29)")
	flags.Lookup("metadata-snap").NoOptDefVal = "held"
	flags.UintSliceVar(&opts.devIDs, "dev-id", nil, "Dump only this device (repeat for more)")
	flags.BoolVar(&opts.skipMappings, "skip-mappings", false, "List the devices without their mappings")
	return cmd
}

// snapFlag is the value of -m/--metadata-snap: absent, "held" (the
// snapshot the superblock names), or the block of a superblock copy.
type snapFlag struct {
	set bool
	at  block.Nr
}

func (s *snapFlag) String() string {
	switch {
	case !s.set:
		return ""
	case s.at == 0:
		return "held"
	}
	return strconv.FormatUint(uint64(s.at), 10)
}

func (s *snapFlag) Set(v string) error {
	if v == "held" {
		*s = snapFlag{set: true}
		return nil
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil || n == 0 {
		return fmt.Errorf("want a block number above 0, or no value for the held snapshot; got %q", v)
	}
	*s = snapFlag{set: true, at: block.Nr(n)}
	return nil
}

// Type is empty so that the help shows "--metadata-snap[=held]" without a
// value name: the value is optional and must be attached.
func (s *snapFlag) Type() string { return "" }

// errDumpDamaged is the cause behind ExitDamage for a dump that left parts out.
var errDumpDamaged = errors.New("parts of the metadata could not be read and are missing from the dump")

func runDump(ctx context.Context, dockerCLI command.Cli, opts dumpOptions) error {
	format, err := xml.ParseFormat(opts.format)
	if err != nil {
		return cli.StatusError{StatusCode: ExitUsage, Status: "dump: " + err.Error()}
	}
	if opts.metadata == "" {
		return cli.StatusError{StatusCode: ExitUsage, Status: "dump: no --metadata given\ngive the pool's metadata device or a copy of it with --metadata FILE"}
	}
	dopts := xml.Options{MetadataSnap: opts.snap.set, SnapBlock: opts.snap.at, SkipMappings: opts.skipMappings}
	for _, id := range opts.devIDs {
		if id > thin.MaxDevID {
			return cli.StatusError{StatusCode: ExitUsage, Status: fmt.Sprintf("dump: --dev-id %d: thin ids are below 2^24", id)}
		}
		dopts.DevIDs = append(dopts.DevIDs, thin.DevID(id))
	}

	in, err := block.Open(opts.metadata)
	if err != nil {
		return operational(fmt.Errorf("cannot open the metadata: %w", err),
			"check the path given to --metadata and that you may read it", false)
	}
	defer in.Close()
	prefetch(in)

	var out io.Writer = dockerCLI.Out()
	var tmp *os.File
	if opts.output != "" {
		// Renaming the dump over its own input would destroy the metadata.
		if a, err := os.Stat(opts.output); err == nil {
			if b, err := in.OS().Stat(); err == nil && os.SameFile(a, b) {
				return cli.StatusError{StatusCode: ExitUsage, Status: fmt.Sprintf("dump: -o %s is the metadata being dumped", opts.output)}
			}
		}
		// Write beside the target and rename at the end, so a failed dump
		// leaves no partial file under the requested name.
		tmp, err = os.CreateTemp(filepath.Dir(opts.output), "."+filepath.Base(opts.output)+".*.tmp")
		if err != nil {
			return operational(fmt.Errorf("cannot create the output: %w", err), "", false)
		}
		defer func() {
			if tmp != nil {
				tmp.Close()
				os.Remove(tmp.Name())
			}
		}()
		out = tmp
	}

	damaged := 0
	errOut := dockerCLI.Err()
	dopts.Damaged = func(err error) {
		damaged++
		fmt.Fprintf(errOut, "dump: skipped %v\n", err)
	}
	w := xml.NewWriter(out, format)
	w.SkipMappings = opts.skipMappings
	err = xml.Dump(in.Reader, &cancelVisitor{Visitor: w, ctx: ctx}, dopts)
	switch {
	case errors.Is(err, context.Canceled):
		return status(ExitCancelled, err, "", false)
	case errors.Is(err, thin.ErrNoSnapshot):
		return operational(fmt.Errorf("%s: %w", opts.metadata, err),
			"reserve one first (dmsetup message POOL 0 reserve_metadata_snap), or give its block with --metadata-snap=BLOCK", false)
	case err != nil && isSuperblockError(err):
		return operational(fmt.Errorf("%s: not readable thin-pool metadata: %w", opts.metadata, err),
			"give --metadata the pool's metadata device or a copy of it, not the data device", false)
	case err != nil:
		return operational(fmt.Errorf("%s: cannot dump: %w", opts.metadata, err), "", false)
	}
	if tmp != nil {
		if err := finishOutput(tmp, opts.output); err != nil {
			return operational(err, "", false)
		}
		tmp = nil
	}
	if damaged > 0 {
		return cli.StatusError{StatusCode: ExitDamage, Cause: errDumpDamaged,
			Status: fmt.Sprintf("dump: %d damaged parts of the metadata are missing from the dump\nrun 'docker devmapper check' for the full picture", damaged)}
	}
	return nil
}

// prefetch starts the kernel reading the metadata blocks in use, in large
// requests, ahead of a walk that reads one block at a time: on a cold
// cache this turns thousands of small random reads into a few big ones.
func prefetch(f *block.File) {
	if sb, err := thin.ReadSuperblock(f.Reader, 0); err == nil {
		f.WillNeed(thin.Allocated(f.Reader, sb, 64))
	}
}

// isSuperblockError says whether err is about the superblock itself: the
// input is not (readable) thin metadata.
func isSuperblockError(err error) bool {
	var be *block.Error
	return errors.As(err, &be) && errors.Is(err, block.ErrCorrupt)
}

// finishOutput gives the temporary file its final mode and name.
func finishOutput(tmp *os.File, name string) error {
	if err := tmp.Chmod(0o644); err != nil {
		return fmt.Errorf("cannot write the output: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("cannot write the output: %w", err)
	}
	if err := os.Rename(tmp.Name(), name); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("cannot write the output: %w", err)
	}
	return nil
}

// cancelVisitor stops a dump when ctx is cancelled. It looks at ctx once
// per device and once every 4096 runs, which costs nothing measurable.
type cancelVisitor struct {
	xml.Visitor
	ctx  context.Context
	runs uint
}

func (c *cancelVisitor) BeginDevice(id thin.DevID, d thin.Details) error {
	if err := c.ctx.Err(); err != nil {
		return err
	}
	return c.Visitor.BeginDevice(id, d)
}

func (c *cancelVisitor) Run(origin, data, length uint64, time uint32) error {
	c.runs++
	if c.runs%4096 == 0 {
		if err := c.ctx.Err(); err != nil {
			return err
		}
	}
	return c.Visitor.Run(origin, data, length, time)
}
