package stream

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/ipcbus/caddy-ipcbus/zone"
)

// eofWithData returns its bytes and io.EOF in the same Read, as an HTTP
// body of a declared length does.
type eofWithData struct{ r *strings.Reader }

func (e eofWithData) Read(p []byte) (int, error) {
	n, _ := e.r.Read(p)
	if e.r.Len() == 0 {
		return n, io.EOF
	}
	return n, nil
}

// countReads counts the Read calls.
type countReads struct {
	r     io.Reader
	reads int
}

func (c *countReads) Read(p []byte) (int, error) { c.reads++; return c.r.Read(p) }

var errBroken = errors.New("broken")

func TestReadInline(t *testing.T) {
	bodyTooLarge := func() io.Reader {
		return http.MaxBytesReader(httptest.NewRecorder(), io.NopCloser(strings.NewReader("0123456789")), 5)
	}
	for _, tc := range []struct {
		name    string
		r       func() io.Reader
		size    int64
		want    string
		wantErr []error
		reads   int // 0: any
	}{
		{name: "exact", r: func() io.Reader { return strings.NewReader("hello") }, size: 5, want: "hello"},
		{name: "empty", r: func() io.Reader { return strings.NewReader("") }, size: 0, want: ""},
		{name: "EOF with the data, read once", r: func() io.Reader { return eofWithData{strings.NewReader("hello")} }, size: 5, want: "hello", reads: 1},
		{name: "a byte at a time", r: func() io.Reader { return iotest.OneByteReader(strings.NewReader("hello")) }, size: 5, want: "hello"},
		{name: "shorter", r: func() io.Reader { return strings.NewReader("hel") }, size: 5, wantErr: []error{zone.ErrRead, io.ErrUnexpectedEOF}},
		{name: "nothing", r: func() io.Reader { return strings.NewReader("") }, size: 5, wantErr: []error{zone.ErrRead, io.EOF}},
		{name: "longer", r: func() io.Reader { return strings.NewReader("hello!") }, size: 5, wantErr: []error{zone.ErrRead}},
		{name: "longer, empty announced", r: func() io.Reader { return strings.NewReader("x") }, size: 0, wantErr: []error{zone.ErrRead}},
		{name: "failing midway", r: func() io.Reader { return io.MultiReader(strings.NewReader("he"), iotest.ErrReader(errBroken)) }, size: 5, wantErr: []error{zone.ErrRead, errBroken}},
		{name: "failing after the payload", r: func() io.Reader { return io.MultiReader(strings.NewReader("hello"), iotest.ErrReader(errBroken)) }, size: 5, wantErr: []error{zone.ErrRead, errBroken}},
		{name: "over a body limit", r: bodyTooLarge, size: 10, wantErr: []error{zone.ErrRead, new(http.MaxBytesError)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &countReads{r: tc.r()}
			p, err := Read(nil, r, tc.size, 64, 1<<20, errors.New("too large"))
			if tc.wantErr != nil {
				for _, w := range tc.wantErr {
					if mb := new(http.MaxBytesError); errors.As(w, &mb) {
						if !errors.As(err, &mb) {
							t.Fatalf("error %v holds no *http.MaxBytesError", err)
						}
					} else if !errors.Is(err, w) {
						t.Fatalf("error %v is not %v", err, w)
					}
				}
				return
			}
			if err != nil || !bytes.Equal(p.Data, []byte(tc.want)) || p.Data == nil || p.Size != tc.size {
				t.Fatalf("got %q (%d bytes), %v", p.Data, p.Size, err)
			}
			if tc.reads != 0 && r.reads != tc.reads {
				t.Fatalf("%d reads, want %d", r.reads, tc.reads)
			}
		})
	}
}
