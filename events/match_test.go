package events

import "testing"

func TestMatches(t *testing.T) {
	for _, c := range []struct {
		pattern, name string
		want          bool
	}{
		{"chat", "chat", true},
		{"chat", "chat.room", false},
		{"chat*", "chat.room", true},
		{"chat.*", "chat", false},
		{"*", "anything", true},
		{"", "", true},
		{"", "x", false},
	} {
		if got := Matches(c.pattern, c.name); got != c.want {
			t.Errorf("Matches(%q, %q) = %v, want %v", c.pattern, c.name, got, c.want)
		}
	}
}
