using System.Net.Sockets;
using Ferry.Core.Flows;
using Microsoft.Extensions.Logging;

namespace Ferry.Client.Access;

/// <summary>Listens on 127.0.0.1 and carries every accepted connection as a flow to one fixed destination, like "ssh -L".</summary>
/// <remarks>A refused flow closes the application's connection at once; the reason is logged, since raw TCP has no way to carry it.</remarks>
public sealed class PortForward : LoopbackProxy
{
    public PortForward(string host, int port, ClientRoutes routes, IFlowOpener opener, LoopbackProxyOptions? options = null, ILogger? logger = null)
        : base($"forward {FlowHeader.FormatHostPort(host, port)}", routes, opener, options, logger)
    {
        if (!FlowHeader.TryValidate(FlowProtocol.Tcp, host, port, out var error))
        {
            throw new ArgumentException($"cannot forward to {FlowHeader.FormatHostPort(host, port)}: {error}", nameof(host));
        }
        Host = host;
        Port = port;
    }

    /// <summary>The destination every connection goes to.</summary>
    public string Host { get; }

    public int Port { get; }

    protected override async Task HandleConnectionAsync(Socket socket, NetworkStream stream, CancellationToken cancellationToken)
    {
        // Unlike a proxy's client, a forwarded application may send before anything answers; those bytes ride with the header.
        await using var early = new EarlyApplicationData(stream);
        var flow = await OpenFlowAsync(Host, Port, early, cancellationToken);
        if (!flow.Reply.IsOk)
        {
            return;
        }
        await CopyAsync(early.Application, early.ShutdownApplicationSend, flow, ReadOnlyMemory<byte>.Empty, early.SentEarly, FlowHeader.FormatHostPort(Host, Port), cancellationToken);
    }
}
