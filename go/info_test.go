package etcdregistry

import (
	"encoding/json"
	"reflect"
	"testing"
)

// The fast path of decodeInfo must read every object exactly as encoding/json does, and fall
// back to it for whatever it does not handle.
func TestDecodeInfoMatchesEncodingJSON(t *testing.T) {
	cases := []string{
		`{}`,
		`{"version":"1.0.0"}`,
		`{"address":"10.0.0.5:8080","version":"1.0.0","zone":""}`,
		`{"":"empty key"}`,
		`{"quote":"a\"b","slash":"a\\b","nl":"x\ny","u":"\u00e9\u2603"}`,
		`{"name":"héllo ☃ 日本"}`,
		`{ "spaced" : "yes" }`,
		`{"a":"1","a":"2"}`,
	}
	for _, c := range cases {
		want := map[string]string{}
		if err := json.Unmarshal([]byte(c), &want); err != nil {
			t.Fatalf("bad case %s: %v", c, err)
		}
		if got := decodeInfo(c); !reflect.DeepEqual(got, want) {
			t.Errorf("decodeInfo(%s) = %v, want %v", c, got, want)
		}
	}
	for _, bad := range []string{``, `{`, `}`, `{"a"}`, `{"a":}`, `{"a":"1",}`, `{"a":"1"}x`, `[1]`} {
		if _, ok := decodePlainObject(bad); ok {
			t.Errorf("decodePlainObject(%q) accepted malformed input", bad)
		}
		if got := decodeInfo(bad); got == nil {
			t.Errorf("decodeInfo(%q) returned nil", bad)
		}
	}
}

func BenchmarkDecodeInfo(b *testing.B) {
	s := `{"address":"10.0.0.5:8080","version":"1.0.0","zone":"eu-west-1a"}`
	for i := 0; i < b.N; i++ {
		decodeInfo(s)
	}
}
