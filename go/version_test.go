package etcdregistry

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// The library linked reports the version in the repository's Cargo.toml.
func TestVersionIsTheCargoVersion(t *testing.T) {
	cargo, err := os.ReadFile("../Cargo.toml")
	if err != nil {
		t.Fatal(err)
	}
	_, section, found := strings.Cut(string(cargo), "[workspace.package]")
	if !found {
		t.Fatal("no [workspace.package] in Cargo.toml")
	}
	m := regexp.MustCompile(`(?m)^version = "([^"]+)"`).FindStringSubmatch(section)
	if m == nil {
		t.Fatal("no version in [workspace.package]")
	}
	if got := Version(); got != m[1] {
		t.Fatalf("Version() = %q, Cargo.toml says %q", got, m[1])
	}
}
