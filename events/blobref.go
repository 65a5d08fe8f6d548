package events

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"go.uber.org/zap"

	"github.com/ipcbus/caddy-ipcbus/zone"
)

// Blob is a payload left in its blob file: what RangeRefs and a Follower
// with BlobRefs give instead of reading it, so that a poller can stream it
// a piece at a time rather than hold it whole. Go handlers of the bus
// never see one: they get Data whole.
type Blob struct {
	// Name is the blob file's name, next to the zone file.
	Name string
	// Size is the payload's length in bytes.
	Size int64

	z   *zone.Zone
	max int64
}

// Open opens the blob file for reading; the caller closes it. The file is
// Size bytes and never changes; once open it stays readable even if the
// blob's lifetime ends meanwhile. Open fails (errors.Is fs.ErrNotExist)
// when the file was removed since the event was read.
func (b *Blob) Open() (*os.File, error) {
	f, size, err := b.z.OpenBlob(b.Name, b.max)
	if err != nil {
		return nil, err
	}
	if size != b.Size {
		f.Close()
		return nil, fmt.Errorf("opening blob %s: it is %d bytes, was %d", b.Name, size, b.Size)
	}
	return f, nil
}

// blobRef stats the event's blob file: the reference poller paths give
// instead of its data. ok is false (logged once per blob) when the file is
// gone or not a blob.
func (b *Bus) blobRef(rec zone.Record, e encoded) (*Blob, bool) {
	name := string(e.payload)
	f, size, err := b.z.OpenBlob(name, b.o.MaxPayload)
	if err != nil {
		b.blobLost(rec, e, name, err)
		return nil, false
	}
	f.Close()
	return &Blob{Name: name, Size: size, z: b.z, max: b.o.MaxPayload}, true
}

// blobLost counts and logs (once per blob and process) a payload whose
// blob file cannot be read.
func (b *Bus) blobLost(rec zone.Record, e encoded, name string, err error) {
	b.st.blobErrors.Add(1)
	if !blobLogs.first(b.z.Path() + "\x00" + name) {
		return
	}
	fields := []zap.Field{zap.Uint64("seq", rec.Seq), zap.String("source", e.source), zap.String("event", e.event), zap.Error(err)}
	var be *zone.BlobError
	if errors.As(err, &be) {
		fields = append(fields, zap.String("path", be.Path))
	}
	if errors.Is(err, fs.ErrNotExist) {
		b.log.Warn("event payload lost: its blob file was removed (blob files are kept for the blob TTL, a minute); logged once per blob", fields...)
	} else {
		b.log.Error("event payload lost: its blob file cannot be read; logged once per blob", fields...)
	}
}

// ValidJSON reports whether r holds exactly one JSON document (what
// json.Valid accepts), reading it a piece at a time and holding nothing
// but its nesting. Errors are r's.
func ValidJSON(r io.Reader) (bool, error) {
	j := &jsonReader{r: r}
	_, err := io.Copy(io.Discard, j)
	switch {
	case errors.Is(err, errNotJSON):
		return false, nil
	case err != nil:
		return false, err
	}
	return j.s.done(), nil
}
