using Ferry.Core.ControlPlane;
using Ferry.Core.Flows;

namespace Ferry.Client.Access;

/// <summary>Opens a flow to a connector of a resource's network: sends the header, waits for the connector's reply.</summary>
/// <remarks>The real opener opens a QUIC stream on the connection to a connector of <c>resource.Network</c>.</remarks>
public interface IFlowOpener
{
    /// <summary>
    /// Opens the flow; a connector's refusal comes back as a non-Ok <see cref="OpenedFlow.Reply"/>, not as an exception.
    /// Failing to reach any connector is also a reply (Unreachable or Timeout) with the reason. When <paramref name="cancellationToken"/>
    /// fires first, the opener throws <see cref="OperationCanceledException"/> and disposes whatever stream it had opened.
    /// <paramref name="early"/>, when given, is sent right after the header (again after each new header) instead of after the reply.
    /// </summary>
    Task<OpenedFlow> OpenAsync(ResourceGrant resource, FlowHeader header, EarlyApplicationData? early, CancellationToken cancellationToken);

    /// <summary>
    /// Opens a UDP flow (<paramref name="header"/> names protocol UDP) with the same connector choice as <see cref="OpenAsync"/>:
    /// a refusal or an unreachable network comes back as a non-Ok <see cref="OpenedUdpFlow.Reply"/>, cancellation as
    /// <see cref="OperationCanceledException"/>. Openers that carry no UDP refuse with the reason.
    /// </summary>
    Task<OpenedUdpFlow> OpenUdpAsync(ResourceGrant resource, FlowHeader header, CancellationToken cancellationToken)
        => Task.FromResult(OpenedUdpFlow.Refused(FlowStatus.ProtocolError, $"this client's flow opener carries TCP flows only, so {header} cannot be opened"));
}

/// <summary>An answered UDP flow: the connector's reply and, when it is Ok, the flow to send and receive payloads on.</summary>
public sealed class OpenedUdpFlow : IAsyncDisposable
{
    public OpenedUdpFlow(FlowReply reply, IUdpFlow? flow = null)
    {
        ArgumentNullException.ThrowIfNull(reply);
        if (reply.IsOk && flow is null)
        {
            throw new ArgumentException("an Ok UDP flow needs its flow", nameof(flow));
        }
        Reply = reply;
        Flow = reply.IsOk ? flow : null;
    }

    public FlowReply Reply { get; }

    /// <summary>The flow, when <see cref="Reply"/> is Ok.</summary>
    public IUdpFlow? Flow { get; }

    public static OpenedUdpFlow Refused(FlowStatus status, string message) => new(new FlowReply(status, message));

    public ValueTask DisposeAsync() => Flow?.DisposeAsync() ?? ValueTask.CompletedTask;
}

/// <summary>An answered flow: the connector's reply and, when it is Ok, the stream to copy bytes over and how to half-close it.</summary>
public sealed class OpenedFlow : IAsyncDisposable
{
    public OpenedFlow(FlowReply reply, Stream? stream = null, Func<Stream, ValueTask>? completeWrites = null)
    {
        ArgumentNullException.ThrowIfNull(reply);
        if (reply.IsOk && (stream is null || completeWrites is null))
        {
            throw new ArgumentException("an Ok flow needs its stream and completeWrites callback", nameof(stream));
        }
        Reply = reply;
        Stream = reply.IsOk ? stream : null;
        CompleteWrites = reply.IsOk ? completeWrites : null;
        if (!reply.IsOk && stream is not null)
        {
            // A refused flow carries no bytes; release its stream now so callers only ever dispose Ok flows' streams.
            stream.Dispose();
        }
    }

    public FlowReply Reply { get; }

    /// <summary>The flow's bytes, when <see cref="Reply"/> is Ok.</summary>
    public Stream? Stream { get; }

    /// <summary>Ends the sending side of <see cref="Stream"/> (QUIC: CompleteWrites; TCP: Shutdown(Send)), when <see cref="Reply"/> is Ok.</summary>
    public Func<Stream, ValueTask>? CompleteWrites { get; }

    public static OpenedFlow Refused(FlowStatus status, string message) => new(new FlowReply(status, message));

    public ValueTask DisposeAsync() => Stream?.DisposeAsync() ?? ValueTask.CompletedTask;
}
