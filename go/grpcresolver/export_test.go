package grpcresolver

import (
	"testing"
	"time"
)

// SetRetryDelays sets the delays between attempts to start a watch, for the resolvers built
// until the test ends; they are restored then.
func SetRetryDelays(t *testing.T, minDelay, maxDelay time.Duration) {
	oldMin, oldMax := retryMin, retryMax
	retryMin, retryMax = minDelay, maxDelay
	t.Cleanup(func() { retryMin, retryMax = oldMin, oldMax })
}
