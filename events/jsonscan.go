package events

import (
	"errors"
	"io"
)

// jsonScanner checks the syntax of a JSON document fed to it a piece at a
// time, holding nothing but its nesting (at most maxJSONDepth levels, as
// encoding/json), so that a payload streamed to a blob file is checked
// without being held. It accepts what json.Valid accepts (FuzzJSONScanner
// compares them).
type jsonScanner struct {
	stack []byte // '{' or '[' per open container
	state jsonState
	lit   string // the rest of a literal (true, false, null)
	hex   int    // hex digits still expected in a \u escape
	bad   bool
}

// maxJSONDepth is encoding/json's nesting limit.
const maxJSONDepth = 10000

type jsonState uint8

const (
	jsValue      jsonState = iota // a value is expected
	jsArrayFirst                  // after '[': a value or ']'
	jsObjectKey                   // after '{': a key or '}'
	jsKey                         // after ',' in an object: a key
	jsColon                       // after a key
	jsAfter                       // after a value
	jsString                      // in a string value
	jsKeyString                   // in a key
	jsEscape                      // after '\' in a string
	jsKeyEscape                   // after '\' in a key
	jsLiteral                     // in true, false or null
	jsMinus                       // after '-'
	jsZero                        // a number's leading 0
	jsInt                         // in a number's integer digits
	jsDot                         // after '.'
	jsFrac                        // in the fraction
	jsE                           // after 'e' or 'E'
	jsESign                       // after the exponent's sign
	jsExp                         // in the exponent
)

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func isHex(c byte) bool { return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' }

// write feeds p; it reports false once the input cannot be JSON.
func (s *jsonScanner) write(p []byte) bool {
	for i := 0; i < len(p) && !s.bad; i++ {
		s.step(p[i])
	}
	return !s.bad
}

// done reports whether the input fed so far is one whole JSON document.
func (s *jsonScanner) done() bool {
	if s.bad || len(s.stack) > 0 {
		return false
	}
	switch s.state {
	case jsAfter, jsZero, jsInt, jsFrac, jsExp:
		return true
	}
	return false
}

func (s *jsonScanner) push(c byte) {
	if len(s.stack) >= maxJSONDepth {
		s.bad = true
		return
	}
	s.stack = append(s.stack, c)
}

// closeWith handles ']' or '}' after a value or an opening bracket.
func (s *jsonScanner) closeWith(c byte) {
	n := len(s.stack)
	if n == 0 || (c == ']') != (s.stack[n-1] == '[') {
		s.bad = true
		return
	}
	s.stack = s.stack[:n-1]
	s.state = jsAfter
}

func (s *jsonScanner) step(c byte) {
	switch s.state {
	case jsValue, jsArrayFirst:
		if isSpace(c) {
			return
		}
		if c == ']' && s.state == jsArrayFirst {
			s.closeWith(c)
			return
		}
		s.value(c)
	case jsObjectKey, jsKey:
		switch {
		case isSpace(c):
		case c == '"':
			s.state = jsKeyString
		case c == '}' && s.state == jsObjectKey:
			s.closeWith(c)
		default:
			s.bad = true
		}
	case jsColon:
		switch {
		case isSpace(c):
		case c == ':':
			s.state = jsValue
		default:
			s.bad = true
		}
	case jsAfter:
		s.after(c)
	case jsString, jsKeyString:
		switch {
		case c == '"':
			if s.state == jsString {
				s.state = jsAfter
			} else {
				s.state = jsColon
			}
		case c == '\\':
			s.state += jsEscape - jsString // jsEscape or jsKeyEscape
		case c < 0x20:
			s.bad = true
		}
	case jsEscape, jsKeyEscape:
		back := s.state - (jsEscape - jsString)
		switch {
		case s.hex > 0:
			if !isHex(c) {
				s.bad = true
			} else if s.hex--; s.hex == 0 {
				s.state = back
			}
		case c == 'u':
			s.hex = 4
		case c == '"' || c == '\\' || c == '/' || c == 'b' || c == 'f' || c == 'n' || c == 'r' || c == 't':
			s.state = back
		default:
			s.bad = true
		}
	case jsLiteral:
		if c != s.lit[0] {
			s.bad = true
		} else if s.lit = s.lit[1:]; s.lit == "" {
			s.state = jsAfter
		}
	case jsMinus:
		switch {
		case c == '0':
			s.state = jsZero
		case c >= '1' && c <= '9':
			s.state = jsInt
		default:
			s.bad = true
		}
	case jsZero, jsInt:
		switch {
		case c >= '0' && c <= '9' && s.state == jsInt:
		case c == '.':
			s.state = jsDot
		case c == 'e' || c == 'E':
			s.state = jsE
		default:
			s.after(c)
		}
	case jsDot:
		if c >= '0' && c <= '9' {
			s.state = jsFrac
		} else {
			s.bad = true
		}
	case jsFrac:
		switch {
		case c >= '0' && c <= '9':
		case c == 'e' || c == 'E':
			s.state = jsE
		default:
			s.after(c)
		}
	case jsE:
		switch {
		case c == '+' || c == '-':
			s.state = jsESign
		case c >= '0' && c <= '9':
			s.state = jsExp
		default:
			s.bad = true
		}
	case jsESign:
		if c >= '0' && c <= '9' {
			s.state = jsExp
		} else {
			s.bad = true
		}
	case jsExp:
		if c < '0' || c > '9' {
			s.after(c)
		}
	}
}

// value starts a value with c.
func (s *jsonScanner) value(c byte) {
	switch {
	case c == '{':
		s.push('{')
		s.state = jsObjectKey
	case c == '[':
		s.push('[')
		s.state = jsArrayFirst
	case c == '"':
		s.state = jsString
	case c == '-':
		s.state = jsMinus
	case c == '0':
		s.state = jsZero
	case c >= '1' && c <= '9':
		s.state = jsInt
	case c == 't':
		s.state, s.lit = jsLiteral, "rue"
	case c == 'f':
		s.state, s.lit = jsLiteral, "alse"
	case c == 'n':
		s.state, s.lit = jsLiteral, "ull"
	default:
		s.bad = true
	}
}

// after handles c after a complete value.
func (s *jsonScanner) after(c byte) {
	s.state = jsAfter
	if isSpace(c) {
		return
	}
	n := len(s.stack)
	switch {
	case n == 0:
		s.bad = true // anything but space after the document
	case c == ',' && s.stack[n-1] == '[':
		s.state = jsValue
	case c == ',':
		s.state = jsKey
	case c == ']' || c == '}':
		s.closeWith(c)
	default:
		s.bad = true
	}
}

// errNotJSON is what a jsonReader fails with on input that is not JSON.
var errNotJSON = errors.New("data is not valid JSON")

// jsonReader passes r through a jsonScanner: it fails with errNotJSON as
// soon as the input cannot be JSON, and at EOF unless it was a whole
// document.
type jsonReader struct {
	r io.Reader
	s jsonScanner
}

func (j *jsonReader) Read(p []byte) (int, error) {
	n, err := j.r.Read(p)
	if !j.s.write(p[:n]) || (err == io.EOF && !j.s.done()) {
		return n, errNotJSON
	}
	return n, err
}
