using Ferry.Core.ControlPlane;

namespace Ferry.UnitTests.ControlPlane;

/// <summary>Parsing of the controller address list and moving on from one that failed.</summary>
public sealed class ControllerEndpointsTests
{
    private static readonly Uri A = new("https://a.example:8443");
    private static readonly Uri B = new("https://b.example:8443");
    private static readonly Uri C = new("https://c.example:8443");

    private static ControllerEndpoints Parse(string text)
    {
        Assert.True(ControllerEndpoints.TryParse(text, out var endpoints, out var error), error);
        Assert.NotNull(endpoints);
        return endpoints;
    }

    [Fact]
    public void One_url_parses_and_is_current()
    {
        var endpoints = Parse("https://a.example:8443");
        Assert.Equal([A], endpoints.All);
        Assert.Equal(A, endpoints.Current);
    }

    [Fact]
    public void Several_urls_parse_in_order_with_spaces_around_them()
    {
        var endpoints = Parse(" https://a.example:8443 ,https://b.example:8443,   http://c.example:8443 ");
        Assert.Equal([A, B, new Uri("http://c.example:8443")], endpoints.All);
        Assert.Equal(A, endpoints.Current);
    }

    [Theory]
    [InlineData("ftp://x", "ftp://x")]
    [InlineData("not a url", "not a url")]
    [InlineData("https://a.example:8443, ftp://x", "ftp://x")]
    [InlineData("https://a.example:8443,not a url,https://b.example:8443", "not a url")]
    [InlineData("a.example:8443", "a.example:8443")]
    public void A_bad_entry_is_refused_with_an_error_naming_it(string text, string entry)
    {
        Assert.False(ControllerEndpoints.TryParse(text, out var endpoints, out var error));
        Assert.Null(endpoints);
        Assert.Contains($"'{entry}'", error, StringComparison.Ordinal);
        Assert.Contains("https://HOST:PORT", error, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("")]
    [InlineData("  ")]
    [InlineData(" , ,")]
    [InlineData(null)]
    public void No_url_at_all_is_refused(string? text)
    {
        Assert.False(ControllerEndpoints.TryParse(text, out var endpoints, out var error));
        Assert.Null(endpoints);
        Assert.Contains("no controller URL", error, StringComparison.Ordinal);
    }

    [Fact]
    public void An_empty_list_cannot_be_constructed()
        => Assert.Throws<ArgumentException>(() => new ControllerEndpoints([]));

    [Fact]
    public void MoveNext_with_the_current_url_moves_to_the_next_and_wraps_around()
    {
        var endpoints = new ControllerEndpoints([A, B, C]);
        endpoints.MoveNext(A);
        Assert.Equal(B, endpoints.Current);
        endpoints.MoveNext(B);
        Assert.Equal(C, endpoints.Current);
        endpoints.MoveNext(C);
        Assert.Equal(A, endpoints.Current);
    }

    [Fact]
    public void MoveNext_with_another_url_than_the_current_one_stays()
    {
        var endpoints = new ControllerEndpoints([A, B, C]);
        endpoints.MoveNext(B);
        Assert.Equal(A, endpoints.Current);
        endpoints.MoveNext(new Uri("https://elsewhere.example:8443"));
        Assert.Equal(A, endpoints.Current);
    }

    [Fact]
    public void Two_callers_reporting_the_same_failed_url_move_on_once()
    {
        var endpoints = new ControllerEndpoints([A, B, C]);
        var failed = endpoints.Current;
        endpoints.MoveNext(failed);
        endpoints.MoveNext(failed);
        Assert.Equal(B, endpoints.Current);
    }

    [Fact]
    public async Task Many_callers_reporting_the_same_failed_url_at_once_move_on_once()
    {
        var endpoints = new ControllerEndpoints([A, B, C]);
        using var start = new Barrier(8);
        var callers = Enumerable.Range(0, 8).Select(_ => Task.Run(() =>
        {
            start.SignalAndWait(TestContext.Current.CancellationToken);
            endpoints.MoveNext(A);
        }, TestContext.Current.CancellationToken)).ToArray();
        await Task.WhenAll(callers).WaitAsync(TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken);
        Assert.Equal(B, endpoints.Current);
    }

    [Fact]
    public void A_failed_url_equal_to_the_current_one_but_a_different_instance_moves_on()
    {
        var endpoints = Parse("https://a.example:8443,https://b.example:8443");
        endpoints.MoveNext(new Uri("https://A.EXAMPLE:8443/"));
        Assert.Equal(B, endpoints.Current);
    }

    [Fact]
    public void A_single_url_stays_current_after_a_failure()
    {
        var endpoints = ControllerEndpoints.Of(A);
        endpoints.MoveNext(A);
        Assert.Equal(A, endpoints.Current);
        Assert.Equal([A], endpoints.All);
    }

    [Fact]
    public void ToString_lists_the_urls_comma_separated_without_trailing_slashes()
    {
        Assert.Equal("https://a.example:8443,https://b.example:8443", Parse("https://a.example:8443/, https://b.example:8443").ToString());
        Assert.Equal("https://a.example:8443", ControllerEndpoints.Of(A).ToString());
    }

    [Fact]
    public void ToString_does_not_change_when_moving_on()
    {
        var endpoints = new ControllerEndpoints([A, B]);
        endpoints.MoveNext(A);
        Assert.Equal("https://a.example:8443,https://b.example:8443", endpoints.ToString());
    }

    [Fact]
    public void ToString_parses_back_to_the_same_list()
    {
        var endpoints = Parse("https://a.example:8443, http://b.example:80/api");
        Assert.Equal(endpoints.All, Parse(endpoints.ToString()).All);
    }
}
