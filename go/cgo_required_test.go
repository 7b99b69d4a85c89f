package etcdregistry

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// Built without cgo, the package fails with an error that names what is missing (it used to
// say only "undefined: cRegistry"). The go command builds it offline, from the module cache.
func TestBuildWithoutCgoSaysCgoIsRequired(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command in PATH")
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	cmd := exec.CommandContext(ctx, goTool, "build", ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-mod=readonly", "GOTOOLCHAIN=local", "GOPROXY=off")
	out, err := cmd.CombinedOutput()
	t.Logf("CGO_ENABLED=0 go build:\n%s", out)
	if err == nil {
		t.Fatal("the package built without cgo")
	}
	if ctx.Err() != nil {
		t.Fatal("go build did not finish in time")
	}
	const want = "etcdregistry_requires_cgo_set_CGO_ENABLED_1"
	if !strings.Contains(string(out), want) {
		t.Fatalf("the build's errors do not say %s", want)
	}
}
