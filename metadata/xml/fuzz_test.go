package xml_test

import (
	"bytes"
	"testing"

	"gotest.tools/v3/assert"

	"github.com/docker-devmapper/docker-devmapper/metadata/xml"
)

// FuzzRead feeds arbitrary text to Read. It must never panic; whatever it
// accepts must print (through Expand and Writer) to XML that it accepts
// again and prints the same way.
func FuzzRead(f *testing.F) {
	for _, name := range []string{
		"s1-one-empty-thin.thin_dump-0.9.0.xml.gz",
		"s3-bigblock-metasnap.thin_dump-0.9.0.xml.gz",
		"s3-bigblock-metasnap.metasnap.thin_dump-0.9.0.xml.gz",
		"s2-snapshot-tree.thin_dump-1.1.0.xml.gz",
	} {
		f.Add(gunzip(f, name))
	}
	s2 := gunzip(f, "s2-snapshot-tree.thin_dump-0.9.0.xml.gz")
	f.Add(s2[:len(s2)/2])
	f.Add([]byte(`<superblock uuid="&lt;x&#65;" time="1" transaction="2" data_block_size="128" nr_data_blocks="9"><device dev_id="1" mapped_blocks="0" transaction="0" creation_time="0" snap_time="0"/></superblock>`))
	f.Fuzz(func(t *testing.T, in []byte) {
		var once bytes.Buffer
		if err := xml.Read(bytes.NewReader(in), xml.Expand(xml.NewWriter(&once, xml.XML))); err != nil {
			return
		}
		var twice bytes.Buffer
		err := xml.Read(bytes.NewReader(once.Bytes()), xml.Expand(xml.NewWriter(&twice, xml.XML)))
		assert.NilError(t, err, "our own output:\n%s", once.Bytes())
		assert.Equal(t, twice.String(), once.String())
	})
}
