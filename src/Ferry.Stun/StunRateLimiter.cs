using System.Runtime.InteropServices;

namespace Ferry.Stun;

/// <summary>Token buckets per source, bounded in memory, on an injected clock.</summary>
internal sealed class StunRateLimiter
{
    private readonly Lock _lock = new();
    private readonly Dictionary<PeerAddress, Bucket> _buckets = [];
    private readonly double _ratePerSecond;
    private readonly double _burst;
    private readonly int _maxSources;
    private readonly TimeProvider _time;
    private Bucket _overflow;
    private long _lastSweep;

    public StunRateLimiter(double ratePerSecond, double burst, int maxSources, TimeProvider time)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(ratePerSecond);
        ArgumentOutOfRangeException.ThrowIfLessThan(burst, 1);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxSources);
        _ratePerSecond = ratePerSecond;
        _burst = burst;
        _maxSources = maxSources;
        _time = time;
        long now = time.GetTimestamp();
        _overflow = new Bucket(burst, now);
        _lastSweep = now;
    }

    public int TrackedSources
    {
        get
        {
            lock (_lock)
            {
                return _buckets.Count;
            }
        }
    }

    public bool TryAcquire(PeerAddress key)
    {
        long now = _time.GetTimestamp();
        lock (_lock)
        {
            if (_buckets.Count >= _maxSources && !_buckets.ContainsKey(key))
            {
                Sweep(now);
                if (_buckets.Count >= _maxSources)
                {
                    // A flood of (possibly spoofed) sources must neither grow memory nor evict
                    // busy peers; newcomers share one bucket until room frees up.
                    return Take(ref _overflow, now);
                }
            }

            ref Bucket bucket = ref CollectionsMarshal.GetValueRefOrAddDefault(_buckets, key, out bool exists);
            if (!exists)
            {
                bucket = new Bucket(_burst, now);
            }

            return Take(ref bucket, now);
        }
    }

    private bool Take(ref Bucket bucket, long now)
    {
        double elapsed = _time.GetElapsedTime(bucket.Stamp, now).TotalSeconds;
        if (elapsed > 0)
        {
            bucket.Tokens = Math.Min(_burst, bucket.Tokens + (elapsed * _ratePerSecond));
            bucket.Stamp = now;
        }

        if (bucket.Tokens < 1)
        {
            return false;
        }

        bucket.Tokens -= 1;
        return true;
    }

    // Forgets sources whose bucket has refilled, at most once a second so a full table is not swept per packet.
    private void Sweep(long now)
    {
        if (_time.GetElapsedTime(_lastSweep, now) < TimeSpan.FromSeconds(1))
        {
            return;
        }

        _lastSweep = now;
        foreach (var (key, bucket) in _buckets)
        {
            double elapsed = _time.GetElapsedTime(bucket.Stamp, now).TotalSeconds;
            if (bucket.Tokens + (elapsed * _ratePerSecond) >= _burst)
            {
                _buckets.Remove(key);
            }
        }
    }

    private struct Bucket(double tokens, long stamp)
    {
        public double Tokens = tokens;
        public long Stamp = stamp;
    }
}
