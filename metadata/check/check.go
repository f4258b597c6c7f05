package check

import (
	"context"
	"errors"

	"github.com/docker-devmapper/docker-devmapper/metadata/block"
)

// ErrNotMetadata: the input holds nothing that looks like dm-thin metadata.
var ErrNotMetadata = errors.New("not dm-thin pool metadata")

// Run checks the metadata r reads. The report holds every problem found;
// the error says only that the check could not be done (I/O failure,
// input that is not thin metadata, a cancelled context).
func Run(ctx context.Context, r *block.Reader, opts Options) (*Report, error) {
	return nil, errors.New("check: not implemented yet")
}
