using System.Net.Sockets;
using Ferry.Core.Flows;

namespace Ferry.Client.Access;

/// <summary>Split tunnelling: opens a destination no resource covers straight from this device, with the same replies a connector gives.</summary>
internal static class DirectDialer
{
    public static async Task<OpenedFlow> DialAsync(string host, int port, CancellationToken cancellationToken)
    {
        var destination = FlowHeader.FormatHostPort(host, port);
        // A dual-mode socket reaches IPv4 and IPv6 destinations, and ConnectAsync(host, port) tries each resolved address.
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try
        {
            await socket.ConnectAsync(host, port, cancellationToken);
            return new OpenedFlow(new FlowReply(FlowStatus.Ok, $"connected directly to {destination}"), new NetworkStream(socket, ownsSocket: true), FlowCopier.ShutdownSocketSend);
        }
        catch (SocketException e)
        {
            socket.Dispose();
            var status = e.SocketErrorCode switch
            {
                SocketError.HostNotFound or SocketError.NoData => FlowStatus.NameNotFound,
                SocketError.ConnectionRefused => FlowStatus.Refused,
                SocketError.TimedOut => FlowStatus.Timeout,
                _ => FlowStatus.Unreachable,
            };
            return OpenedFlow.Refused(status, $"direct connection to {destination} failed: {e.Message}");
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }
}
