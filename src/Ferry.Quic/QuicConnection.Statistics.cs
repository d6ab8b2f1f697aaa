using Ferry.Quic.Interop;
using static Ferry.Quic.Interop.Ngtcp2Const;

namespace Ferry.Quic;

/// <summary>A snapshot of a connection's path measurements, for example to rank connectors by RTT.</summary>
/// <param name="SmoothedRtt">Smoothed round-trip time.</param>
/// <param name="MinRtt">Smallest RTT sample seen.</param>
/// <param name="LatestRtt">Most recent RTT sample.</param>
/// <param name="RttVariance">RTT variation.</param>
/// <param name="CongestionWindow">Congestion window in bytes.</param>
/// <param name="BytesInFlight">Sent and not yet acknowledged or declared lost.</param>
/// <param name="MaxUdpPayloadSize">Largest UDP payload currently sent on the path.</param>
/// <param name="PtoCount">Consecutive probe timeouts (grows while the path is dead).</param>
/// <param name="BytesSent">UDP payload bytes this connection has sent, on every path.</param>
/// <param name="BytesReceived">UDP payload bytes this connection has received, on every path.</param>
public readonly record struct QuicConnectionStatistics(
    TimeSpan SmoothedRtt,
    TimeSpan MinRtt,
    TimeSpan LatestRtt,
    TimeSpan RttVariance,
    long CongestionWindow,
    long BytesInFlight,
    int MaxUdpPayloadSize,
    int PtoCount,
    long BytesSent,
    long BytesReceived);

public sealed partial class QuicConnection
{
    // Guarded by _lock, like every other piece of connection state.
    private long _bytesSent;
    private long _bytesReceived;
    private long _lastReceived = System.Diagnostics.Stopwatch.GetTimestamp();

    /// <summary>How long ago the peer's last packet was accepted: a peer that acknowledges nothing for many round trips is gone.</summary>
    public TimeSpan SinceLastReceived => System.Diagnostics.Stopwatch.GetElapsedTime(Volatile.Read(ref _lastReceived));

    /// <summary>Current RTT, congestion and path figures from ngtcp2.</summary>
    public unsafe QuicConnectionStatistics GetStatistics()
    {
        lock (_lock)
        {
            ThrowIfTerminalLocked();
            ngtcp2_conn_stat stat;
            Ngtcp2.ngtcp2_conn_get_conn_stat_versioned(_c, NGTCP2_CONN_STAT_VERSION, &stat);
            static TimeSpan Ns(ulong ns) => TimeSpan.FromTicks((long)(ns / 100));
            return new QuicConnectionStatistics(
                Ns(stat.smoothed_rtt),
                stat.min_rtt == ulong.MaxValue ? TimeSpan.Zero : Ns(stat.min_rtt),
                Ns(stat.latest_rtt),
                Ns(stat.rttvar),
                (long)stat.cwnd,
                (long)stat.bytes_in_flight,
                (int)stat.max_tx_udp_payload_size,
                (int)stat.pto_count,
                _bytesSent,
                _bytesReceived);
        }
    }
}
