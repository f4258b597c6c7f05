// Command mkpool writes the metadata of a generated thin pool that looks
// like one the Docker devicemapper driver leaves behind: a base device,
// trees of image layers (each a snapshot of the layer below it, written at
// its level), and containers on top (an init layer and the container,
// both written, or for one container in four never started: nothing
// written). Devices share bottom-level leaves exactly where the kernel
// would: a snapshot shares every leaf of its origin, and a leaf it writes
// to becomes a private copy; a snapshot never written shares its origin's
// whole tree.
//
// Usage:
//
//	mkpool -o FILE [-mappings N] [-seed S] [-data-block-size SECTORS] [-lower-count] [-q]
//
// N is the sum of every device's mapped_blocks (a shared mapping counts
// once per device that sees it, as mapped_blocks does), so tools that walk
// each device's mappings do about N steps. The output is sized to fit and
// written sparse; the same seed gives the same file.
package main

import (
	"flag"
	"fmt"
	"os"
	"time"
)

func main() {
	var cfg config
	flag.StringVar(&cfg.out, "o", "", "write the metadata to `file` (created or truncated)")
	flag.Uint64Var(&cfg.mappings, "mappings", 4_000_000, "about `n` mappings, summed over devices")
	flag.Uint64Var(&cfg.seed, "seed", 1, "random `seed`")
	flag.UintVar(&cfg.dataBlockSize, "data-block-size", 128, "data block size in `sectors`")
	quiet := flag.Bool("q", false, "print nothing on success")
	lower := flag.Bool("lower-count", false, "then damage the pool as in the classic report: one data block mapped by two leaves gets a stored count of 1")
	flag.Parse()
	if cfg.out == "" || flag.NArg() != 0 {
		flag.Usage()
		os.Exit(2)
	}
	start := time.Now()
	st, err := generate(cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "mkpool: %v\n", err)
		os.Exit(1)
	}
	if *lower {
		b, err := lowerCount(cfg.out)
		if err != nil {
			fmt.Fprintf(os.Stderr, "mkpool: -lower-count: %v\n", err)
			os.Exit(1)
		}
		if !*quiet {
			fmt.Printf("%s: data block %d: count lowered to 1, expected 2\n", cfg.out, b)
		}
	}
	if !*quiet {
		fmt.Printf("%s: %d devices, %d mappings (%d written as private leaf entries), %d data blocks, %d of %d metadata blocks used, %.2fs\n",
			cfg.out, st.devices, st.mapped, st.private, st.dataBlocks, st.metaUsed, st.metaBlocks, time.Since(start).Seconds())
	}
}
