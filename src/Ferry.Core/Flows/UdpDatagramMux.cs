using System.Collections.Concurrent;

namespace Ferry.Core.Flows;

/// <summary>Queues one datagram on a connection; false when it could not be (too large for the path now, not accepted, connection gone).</summary>
public delegate bool DatagramSender(ReadOnlySpan<byte> datagram);

/// <summary>
/// The UDP flows of one connection: routes each received datagram by its quarter stream id to the live flow (unknown ids are
/// dropped and counted), and sends the flows' datagrams. One per connection, fed by that connection's single datagram reader.
/// </summary>
public sealed class UdpDatagramMux
{
    private readonly ConcurrentDictionary<long, UdpFlowChannel> _flows = new();
    private readonly Func<int> _maxDatagramPayloadSize;
    private readonly DatagramSender _send;
    private long _unknown;
    private long _malformed;
    private long _carried;
    private volatile string? _closed;

    /// <param name="maxDatagramPayloadSize">The largest datagram the connection takes now (QUIC: MaxDatagramPayloadSize; 0 when the peer takes none).</param>
    /// <param name="send">Queues a datagram on the connection.</param>
    public UdpDatagramMux(Func<int> maxDatagramPayloadSize, DatagramSender send)
    {
        ArgumentNullException.ThrowIfNull(maxDatagramPayloadSize);
        ArgumentNullException.ThrowIfNull(send);
        _maxDatagramPayloadSize = maxDatagramPayloadSize;
        _send = datagram =>
        {
            Interlocked.Increment(ref _carried);
            return send(datagram);
        };
    }

    /// <summary>Datagrams of live flows received or sent so far; a change means the connection's UDP flows carry traffic (second factors lapse without it).</summary>
    public long Carried => Interlocked.Read(ref _carried);

    /// <summary>Largest datagram (quarter stream id included) the connection takes now.</summary>
    public int MaxDatagramPayloadSize => _maxDatagramPayloadSize();

    /// <summary>Datagrams dropped because no live flow has their id (late ones of ended flows, mostly).</summary>
    public long UnknownDropped => Interlocked.Read(ref _unknown);

    /// <summary>Datagrams dropped because their id was cut short.</summary>
    public long MalformedDropped => Interlocked.Read(ref _malformed);

    /// <summary>Live UDP flows.</summary>
    public int Count => _flows.Count;

    /// <summary>Routes one received datagram; the mux keeps <paramref name="datagram"/> (its payload is handed on without a copy).</summary>
    public void Deliver(byte[] datagram)
    {
        ArgumentNullException.ThrowIfNull(datagram);
        if (!UdpFlowFraming.TryDecodeDatagram(datagram, out var id, out var offset))
        {
            Interlocked.Increment(ref _malformed);
            return;
        }
        if (_flows.TryGetValue(id, out var flow))
        {
            Interlocked.Increment(ref _carried);
            flow.Deliver(datagram, offset);
        }
        else
        {
            Interlocked.Increment(ref _unknown);
        }
    }

    /// <summary>
    /// Client side: opens a UDP flow on a fresh stream. Registers it first (a datagram may overtake the reply), writes the header,
    /// reads the reply, and returns the started flow when it is Ok. On refusal or failure the flow and its stream are disposed.
    /// </summary>
    public async Task<(FlowReply Reply, UdpFlowChannel? Flow)> OpenAsync(long streamId, Stream stream, Func<Stream, ValueTask> completeWrites, FlowHeader header, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(header);
        if (header.Protocol != FlowProtocol.Udp)
        {
            throw new ArgumentException($"a UDP flow needs a UDP header, not {header}", nameof(header));
        }
        var flow = Register(streamId, stream, completeWrites);
        try
        {
            await header.WriteAsync(stream, cancellationToken);
            var reply = await FlowReply.ReadAsync(stream, cancellationToken);
            if (!reply.IsOk)
            {
                flow.End(new UdpFlowEnd(ByPeer: true, reply.Status, reply.Message));
                await flow.DisposeAsync();
                return (reply, null);
            }
            flow.Start();
            return (reply, flow);
        }
        catch
        {
            await flow.DisposeAsync();
            throw;
        }
    }

    /// <summary>Connector side: registers an admitted flow, answers <paramref name="reply"/> (Ok) on its stream, and starts it.</summary>
    public async Task<UdpFlowChannel> AcceptAsync(long streamId, Stream stream, Func<Stream, ValueTask> completeWrites, FlowReply reply, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(reply);
        if (!reply.IsOk)
        {
            throw new ArgumentException("only an admitted flow is accepted; refusals are answered on the stream alone", nameof(reply));
        }
        var flow = Register(streamId, stream, completeWrites);
        try
        {
            await reply.WriteAsync(stream, cancellationToken);
            flow.Start();
            return flow;
        }
        catch
        {
            await flow.DisposeAsync();
            throw;
        }
    }

    /// <summary>Ends every flow: the connection is gone, so none of them can carry anything more.</summary>
    public void Close(string reason)
    {
        _closed = reason;
        foreach (var flow in _flows.Values)
        {
            flow.End(new UdpFlowEnd(ByPeer: true, FlowStatus.Unreachable, reason));
        }
    }

    internal UdpFlowChannel Register(long streamId, Stream stream, Func<Stream, ValueTask> completeWrites)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentNullException.ThrowIfNull(completeWrites);
        var flow = new UdpFlowChannel(this, streamId, stream, completeWrites);
        if (!_flows.TryAdd(flow.QuarterStreamId, flow))
        {
            throw new InvalidOperationException($"stream {streamId} already carries a UDP flow on this connection");
        }
        if (_closed is { } reason)
        {
            flow.End(new UdpFlowEnd(ByPeer: true, FlowStatus.Unreachable, reason));
        }
        return flow;
    }

    internal void Unregister(UdpFlowChannel flow) => _flows.TryRemove(new KeyValuePair<long, UdpFlowChannel>(flow.QuarterStreamId, flow));

    internal bool TrySend(ReadOnlySpan<byte> datagram) => _send(datagram);
}
