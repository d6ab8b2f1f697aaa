using Ferry.Client.Routing;
using Ferry.Core.ControlPlane;
using Ferry.Core.Model;
using Microsoft.Extensions.Time.Testing;

namespace Ferry.UnitTests.Routing;

/// <summary>How clients spread over, stick to, set aside and prefer nearby connectors of a network.</summary>
public sealed class ConnectorSelectorTests
{
    private const string Net = "nw_corp";
    private const int ClientCount = 1000;

    private const string Frankfurt = "50.11,8.68";
    private const string Amsterdam = "52.37,4.90";
    private const string Utrecht = "52.08,5.12";
    private const string Washington = "38.90,-77.04";
    private const string London = "51.51,-0.13";
    private const string Tokyo = "35.68,139.69";

    private static string[] Nothing => [];

    private static ConnectorRoute Route(string identity, int clients = 0, string? location = null)
        => new(identity, identity.Replace("connector/", "", StringComparison.Ordinal), location, clients);

    private static ConnectorSelector Selector(string client, FakeTimeProvider? time = null, string? location = null, params ConnectorRoute[] connectors)
    {
        var selector = new ConnectorSelector(client, location is null ? null : GeoLocation.ParseOrNull(location) ?? throw new ArgumentException(location), time ?? new FakeTimeProvider());
        selector.Update([new NetworkConnectors(Net, connectors)]);
        return selector;
    }

    private static IReadOnlyList<string> Order(string client, params ConnectorRoute[] connectors)
        => Selector(client, connectors: connectors).Candidates(Net, Nothing);

    private static string First(string client, params ConnectorRoute[] connectors) => Order(client, connectors)[0];

    private static IEnumerable<string> Clients() => Enumerable.Range(0, ClientCount).Select(i => $"client/{i}");

    private static Dictionary<string, int> FirstChoices(string? location, params ConnectorRoute[] connectors)
    {
        var counts = connectors.ToDictionary(c => c.Identity, _ => 0);
        foreach (var client in Clients())
        {
            counts[Selector(client, location: location, connectors: connectors).Candidates(Net, Nothing)[0]]++;
        }
        return counts;
    }

    /// <summary>A client whose own ranking of <paramref name="connectors"/> puts <paramref name="wanted"/> first.</summary>
    private static string ClientPreferring(string wanted, params ConnectorRoute[] connectors)
        => Clients().First(c => First(c, connectors) == wanted);

    // ---- spread ----

    [Fact]
    public void Clients_spread_evenly_over_two_connectors_with_equal_load()
    {
        var counts = FirstChoices(null, Route("connector/a"), Route("connector/b"));
        Assert.All(counts, c => Assert.InRange(c.Value, 400, 600));
    }

    [Fact]
    public void Clients_spread_evenly_over_three_connectors_with_equal_load()
    {
        var counts = FirstChoices(null, Route("connector/a", 4), Route("connector/b", 4), Route("connector/c", 4));
        Assert.All(counts, c => Assert.InRange(c.Value, 250, 420));
    }

    [Fact]
    public void A_connector_with_fewer_clients_is_chosen_by_more_clients()
    {
        var counts = FirstChoices(null, Route("connector/a", clients: 9), Route("connector/b", clients: 0));
        // Weights 1/10 and 1/1: b wins about 91 % of the time.
        Assert.True(counts["connector/b"] > 800, $"b was first for {counts["connector/b"]} of {ClientCount}");
        Assert.True(counts["connector/a"] > 20, $"a was first for {counts["connector/a"]} of {ClientCount}: the weighting should not be all or nothing");
    }

    [Fact]
    public void Negative_client_counts_count_as_none()
    {
        var negative = FirstChoices(null, Route("connector/a", clients: -5), Route("connector/b", clients: 0));
        Assert.All(negative, c => Assert.InRange(c.Value, 400, 600));
    }

    [Fact]
    public void Every_listed_connector_is_a_candidate_exactly_once()
    {
        var order = Order("client/1", Route("connector/a"), Route("connector/b"), Route("connector/c"));
        Assert.Equal(["connector/a", "connector/b", "connector/c"], order.Order(StringComparer.Ordinal));
    }

    // ---- determinism ----

    [Fact]
    public void The_same_client_and_list_give_the_same_order_in_another_selector_and_in_any_list_order()
    {
        ConnectorRoute[] connectors = [Route("connector/a", 1), Route("connector/b", 2), Route("connector/c", 0), Route("connector/d", 1)];
        foreach (var client in Clients().Take(100))
        {
            var first = Order(client, connectors);
            Assert.Equal(first, Order(client, connectors));
            Assert.Equal(first, Order(client, [.. Enumerable.Reverse(connectors)]));
            Assert.Equal(first, Order(client, [connectors[2], connectors[0], connectors[3], connectors[1]]));
        }
    }

    [Fact]
    public void Different_clients_get_different_orders()
        => Assert.True(Clients().Take(50).Select(c => string.Join(",", Order(c, Route("connector/a"), Route("connector/b"), Route("connector/c")))).Distinct().Count() >= 4);

    // ---- minimal disruption ----

    [Fact]
    public void Adding_a_connector_moves_only_clients_to_it_and_about_a_third_of_them()
    {
        ConnectorRoute[] two = [Route("connector/a"), Route("connector/b")];
        ConnectorRoute[] three = [.. two, Route("connector/c")];
        var moved = 0;
        foreach (var client in Clients())
        {
            var before = First(client, two);
            var after = First(client, three);
            if (before != after)
            {
                Assert.Equal("connector/c", after);
                moved++;
            }
        }
        Assert.InRange(moved, 250, 420);
    }

    [Fact]
    public void Removing_a_connector_moves_only_its_clients()
    {
        ConnectorRoute[] three = [Route("connector/a"), Route("connector/b"), Route("connector/c")];
        ConnectorRoute[] two = [three[0], three[1]];
        foreach (var client in Clients())
        {
            var before = First(client, three);
            if (before != "connector/c")
            {
                Assert.Equal(before, First(client, two));
            }
        }
    }

    // ---- stickiness and failures ----

    [Fact]
    public void After_a_success_the_connector_stays_first_even_when_another_would_rank_higher()
    {
        var client = ClientPreferring("connector/a", Route("connector/a"), Route("connector/b"), Route("connector/c"));
        var selector = Selector(client, connectors: [Route("connector/a"), Route("connector/b"), Route("connector/c")]);
        selector.Succeeded(Net, "connector/a");

        ConnectorRoute[] loaded = [Route("connector/a", clients: 1000), Route("connector/b"), Route("connector/c")];
        Assert.NotEqual("connector/a", First(client, loaded));
        selector.Update([new NetworkConnectors(Net, loaded)]);

        var order = selector.Candidates(Net, Nothing);
        Assert.Equal("connector/a", order[0]);
        Assert.Equal(3, order.Count);
    }

    [Fact]
    public void Success_on_a_connector_that_is_not_the_top_ranked_one_puts_it_first()
    {
        ConnectorRoute[] connectors = [Route("connector/a"), Route("connector/b"), Route("connector/c")];
        var client = ClientPreferring("connector/a", connectors);
        var selector = Selector(client, connectors: connectors);
        var last = selector.Candidates(Net, Nothing)[^1];
        selector.Succeeded(Net, last);
        var order = selector.Candidates(Net, Nothing);
        Assert.Equal(last, order[0]);
        Assert.Equal(3, order.Distinct().Count());
    }

    [Fact]
    public void Stickiness_is_per_network()
    {
        ConnectorRoute[] connectors = [Route("connector/a"), Route("connector/b")];
        var client = ClientPreferring("connector/a", connectors);
        var selector = new ConnectorSelector(client, null, new FakeTimeProvider());
        selector.Update([new NetworkConnectors(Net, connectors), new NetworkConnectors("nw_other", connectors)]);
        selector.Succeeded(Net, "connector/b");
        Assert.Equal("connector/b", selector.Candidates(Net, Nothing)[0]);
        Assert.Equal("connector/a", selector.Candidates("nw_other", Nothing)[0]);
    }

    [Fact]
    public void A_failed_connector_goes_after_the_healthy_ones_which_keep_their_order()
    {
        ConnectorRoute[] connectors = [Route("connector/a"), Route("connector/b"), Route("connector/c")];
        var client = ClientPreferring("connector/a", connectors);
        var healthyOrder = Order(client, connectors[1], connectors[2]);
        var selector = Selector(client, connectors: connectors);
        selector.Succeeded(Net, "connector/a");

        selector.Failed(Net, "connector/a");

        Assert.Equal([.. healthyOrder, "connector/a"], selector.Candidates(Net, Nothing));
    }

    [Fact]
    public void A_failed_connector_that_was_not_in_use_also_goes_last_and_the_one_in_use_stays_first()
    {
        ConnectorRoute[] connectors = [Route("connector/a"), Route("connector/b"), Route("connector/c")];
        var client = ClientPreferring("connector/a", connectors);
        var selector = Selector(client, connectors: connectors);
        selector.Succeeded(Net, "connector/a");
        var second = selector.Candidates(Net, Nothing)[1];

        selector.Failed(Net, second);

        var order = selector.Candidates(Net, Nothing);
        Assert.Equal("connector/a", order[0]);
        Assert.Equal(second, order[^1]);
    }

    [Fact]
    public void Failed_connectors_are_tried_oldest_failure_first()
    {
        var time = new FakeTimeProvider();
        var selector = Selector("client/1", time, connectors: [Route("connector/a"), Route("connector/b"), Route("connector/c")]);
        selector.Failed(Net, "connector/b");
        time.Advance(TimeSpan.FromSeconds(5));
        selector.Failed(Net, "connector/a");
        Assert.Equal(["connector/c", "connector/b", "connector/a"], selector.Candidates(Net, Nothing));
    }

    [Fact]
    public void A_failed_connector_is_held_back_until_the_hold_has_passed_and_then_ranks_as_before()
    {
        var time = new FakeTimeProvider();
        ConnectorRoute[] connectors = [Route("connector/a"), Route("connector/b"), Route("connector/c")];
        var client = ClientPreferring("connector/a", connectors);
        var fresh = Order(client, connectors);
        var selector = Selector(client, time, connectors: connectors);

        selector.Failed(Net, "connector/a");
        time.Advance(ConnectorSelector.FailureHold - TimeSpan.FromMilliseconds(1));
        Assert.Equal("connector/a", selector.Candidates(Net, Nothing)[^1]);

        time.Advance(TimeSpan.FromMilliseconds(1));
        Assert.Equal(fresh, selector.Candidates(Net, Nothing));
    }

    [Fact]
    public void After_the_hold_a_failed_connector_ranks_again_behind_the_one_chosen_since()
    {
        var time = new FakeTimeProvider();
        ConnectorRoute[] connectors = [Route("connector/a"), Route("connector/b"), Route("connector/c")];
        var client = ClientPreferring("connector/a", connectors);
        var selector = Selector(client, time, connectors: connectors);
        selector.Succeeded(Net, "connector/a");
        selector.Failed(Net, "connector/a");
        var next = selector.Candidates(Net, Nothing)[0];
        Assert.NotEqual("connector/a", next);
        selector.Succeeded(Net, next);

        time.Advance(ConnectorSelector.FailureHold + TimeSpan.FromSeconds(1));

        var order = selector.Candidates(Net, Nothing);
        Assert.Equal(next, order[0]);
        // The rest follow the client's own ranking again, so a (top-ranked) is right behind the sticky choice.
        Assert.Equal([next, .. Order(client, connectors).Where(c => c != next)], order);
        Assert.Equal("connector/a", order[1]);
    }

    [Fact]
    public void A_success_clears_an_earlier_failure_at_once()
    {
        ConnectorRoute[] connectors = [Route("connector/a"), Route("connector/b")];
        var client = ClientPreferring("connector/a", connectors);
        var selector = Selector(client, connectors: connectors);
        selector.Failed(Net, "connector/a");
        Assert.Equal("connector/b", selector.Candidates(Net, Nothing)[0]);
        selector.Succeeded(Net, "connector/a");
        Assert.Equal(["connector/a", "connector/b"], selector.Candidates(Net, Nothing));
        Assert.Empty(selector.Routes().Single().Failed);
    }

    [Fact]
    public void When_every_connector_failed_all_are_still_candidates()
    {
        var selector = Selector("client/1", connectors: [Route("connector/a"), Route("connector/b")]);
        selector.Failed(Net, "connector/a");
        selector.Failed(Net, "connector/b");
        Assert.Equal(["connector/a", "connector/b"], selector.Candidates(Net, Nothing).Order(StringComparer.Ordinal));
    }

    // ---- removal and held connections ----

    [Fact]
    public void A_sticky_connector_the_controller_no_longer_lists_is_not_a_candidate()
    {
        var selector = Selector("client/1", connectors: [Route("connector/a"), Route("connector/b"), Route("connector/c")]);
        selector.Succeeded(Net, "connector/a");
        selector.Update([new NetworkConnectors(Net, [Route("connector/b"), Route("connector/c")])]);

        var order = selector.Candidates(Net, Nothing);
        Assert.DoesNotContain("connector/a", order);
        Assert.Equal(2, order.Count);
    }

    [Fact]
    public void A_sticky_connector_that_is_not_listed_but_held_comes_last()
    {
        var selector = Selector("client/1", connectors: [Route("connector/a"), Route("connector/b"), Route("connector/c")]);
        selector.Succeeded(Net, "connector/a");
        selector.Update([new NetworkConnectors(Net, [Route("connector/b"), Route("connector/c")])]);

        var order = selector.Candidates(Net, ["connector/a"]);
        Assert.Equal(3, order.Count);
        Assert.Equal("connector/a", order[^1]);
    }

    [Fact]
    public void A_sticky_connector_that_is_listed_again_is_first_again()
    {
        ConnectorRoute[] connectors = [Route("connector/a"), Route("connector/b")];
        var client = ClientPreferring("connector/a", connectors);
        var selector = Selector(client, connectors: connectors);
        selector.Succeeded(Net, "connector/b");
        selector.Update([new NetworkConnectors(Net, [connectors[0]])]);
        Assert.Equal(["connector/a"], selector.Candidates(Net, Nothing));
        selector.Update([new NetworkConnectors(Net, connectors)]);
        Assert.Equal(["connector/b", "connector/a"], selector.Candidates(Net, Nothing));
    }

    [Fact]
    public void With_no_connectors_listed_only_the_held_ones_are_candidates()
    {
        var selector = Selector("client/1");
        Assert.Equal(["connector/gone"], selector.Candidates(Net, ["connector/gone"]));
        Assert.Empty(selector.Candidates(Net, Nothing));
    }

    [Fact]
    public void For_a_network_never_listed_only_the_held_ones_are_candidates()
    {
        var selector = new ConnectorSelector("client/1", null, new FakeTimeProvider());
        Assert.Equal(["connector/gone"], selector.Candidates("nw_unknown", ["connector/gone"]));
        Assert.Empty(selector.Candidates("nw_unknown", Nothing));
    }

    [Fact]
    public void Held_connectors_that_are_listed_are_not_repeated()
    {
        var selector = Selector("client/1", connectors: [Route("connector/a"), Route("connector/b")]);
        var order = selector.Candidates(Net, ["connector/b", "connector/gone", "connector/a", "connector/gone"]);
        Assert.Equal(3, order.Count);
        Assert.Equal("connector/gone", order[^1]);
        Assert.Equal(order.Count, order.Distinct().Count());
    }

    [Fact]
    public void Held_connectors_that_failed_come_after_the_listed_ones()
    {
        var selector = Selector("client/1", connectors: [Route("connector/a")]);
        selector.Failed(Net, "connector/gone");
        Assert.Equal(["connector/a", "connector/gone"], selector.Candidates(Net, ["connector/gone"]));
    }

    // ---- geography ----

    [Fact]
    public void The_nearest_connector_is_first_whatever_its_load()
    {
        ConnectorRoute[] connectors = [Route("connector/ams", clients: 50, Amsterdam), Route("connector/was", clients: 0, Washington)];
        foreach (var client in Clients())
        {
            Assert.Equal(["connector/ams", "connector/was"], Selector(client, location: Frankfurt, connectors: connectors).Candidates(Net, Nothing));
        }
    }

    [Fact]
    public void Connectors_about_equally_near_share_the_clients()
    {
        var counts = FirstChoices(Frankfurt, Route("connector/ams", 0, Amsterdam), Route("connector/utr", 0, Utrecht), Route("connector/was", 0, Washington));
        Assert.True(counts["connector/ams"] > 250, $"Amsterdam was first for {counts["connector/ams"]}");
        Assert.True(counts["connector/utr"] > 250, $"Utrecht was first for {counts["connector/utr"]}");
        Assert.Equal(0, counts["connector/was"]);
    }

    [Fact]
    public void Far_away_connectors_within_a_quarter_of_the_distance_count_as_equally_near()
    {
        // From Washington: Amsterdam ≈ 6190 km, Frankfurt ≈ 6530 km, well within 25 %.
        var counts = FirstChoices(Washington, Route("connector/ams", 0, Amsterdam), Route("connector/fra", 0, Frankfurt));
        Assert.All(counts, c => Assert.True(c.Value > 250, $"{c.Key} was first for {c.Value}"));
    }

    [Fact]
    public void A_connector_beyond_the_near_slack_does_not_share_the_clients()
    {
        // From Frankfurt: Amsterdam ≈ 364 km, London ≈ 638 km: beyond max(100 km, 25 %) of the nearest.
        var counts = FirstChoices(Frankfurt, Route("connector/ams", 20, Amsterdam), Route("connector/lon", 0, London));
        Assert.Equal(ClientCount, counts["connector/ams"]);
    }

    [Fact]
    public void Farther_connectors_follow_by_distance_whatever_their_load()
    {
        ConnectorRoute[] connectors = [Route("connector/tyo", 0, Tokyo), Route("connector/was", 10, Washington), Route("connector/lon", 20, London), Route("connector/ams", 30, Amsterdam)];
        foreach (var client in Clients().Take(100))
        {
            Assert.Equal(["connector/ams", "connector/lon", "connector/was", "connector/tyo"], Selector(client, location: Frankfurt, connectors: connectors).Candidates(Net, Nothing));
        }
    }

    [Fact]
    public void Connectors_without_a_location_rank_after_the_located_ones()
    {
        ConnectorRoute[] connectors = [Route("connector/none", 0), Route("connector/was", 50, Washington), Route("connector/ams", 50, Amsterdam)];
        foreach (var client in Clients().Take(200))
        {
            Assert.Equal(["connector/ams", "connector/was", "connector/none"], Selector(client, location: Frankfurt, connectors: connectors).Candidates(Net, Nothing));
        }
    }

    [Fact]
    public void Connectors_with_an_unreadable_location_rank_as_without_one()
    {
        ConnectorRoute[] connectors = [Route("connector/bad", 0, "91,0"), Route("connector/ams", 50, Amsterdam)];
        foreach (var client in Clients().Take(200))
        {
            Assert.Equal(["connector/ams", "connector/bad"], Selector(client, location: Frankfurt, connectors: connectors).Candidates(Net, Nothing));
        }
    }

    // Fails today: GeoLocation.TryParse accepts "NaN,0" (see GeoLocationTests), its distance is NaN, NaN makes the
    // nearest distance NaN, and NaN sorts before every number, so such a connector goes first for every client.
    [Fact]
    public void A_connector_at_not_a_number_coordinates_does_not_go_before_a_near_one()
    {
        ConnectorRoute[] connectors = [Route("connector/nan", 0, "NaN,0"), Route("connector/ams", 50, Amsterdam)];
        foreach (var client in Clients().Take(200))
        {
            Assert.Equal("connector/ams", Selector(client, location: Frankfurt, connectors: connectors).Candidates(Net, Nothing)[0]);
        }
    }

    [Fact]
    public void A_connector_in_the_clients_region_goes_first()
    {
        ConnectorRoute[] connectors = [Route("connector/us", 0, "us-east"), Route("connector/eu", 50, "EU-West")];
        foreach (var client in Clients())
        {
            Assert.Equal(["connector/eu", "connector/us"], Selector(client, location: "eu-west", connectors: connectors).Candidates(Net, Nothing));
        }
    }

    [Fact]
    public void Connectors_in_the_clients_region_share_its_clients()
    {
        var counts = FirstChoices("eu-west", Route("connector/eu1", 0, "eu-west"), Route("connector/eu2", 0, "eu-west"), Route("connector/us", 0, "us-east"));
        Assert.InRange(counts["connector/eu1"], 400, 600);
        Assert.InRange(counts["connector/eu2"], 400, 600);
        Assert.Equal(0, counts["connector/us"]);
    }

    [Fact]
    public void Without_a_client_location_locations_are_ignored()
    {
        var counts = FirstChoices(null, Route("connector/ams", 0, Amsterdam), Route("connector/was", 0, Washington));
        Assert.All(counts, c => Assert.InRange(c.Value, 400, 600));
    }

    [Fact]
    public void Without_any_connector_location_a_located_client_spreads_as_usual()
    {
        var counts = FirstChoices(Frankfurt, Route("connector/a"), Route("connector/b"));
        Assert.All(counts, c => Assert.InRange(c.Value, 400, 600));
    }

    [Fact]
    public void The_location_is_the_one_given()
    {
        Assert.Null(new ConnectorSelector("client/1", null, new FakeTimeProvider()).Location);
        Assert.Equal("eu-west", new ConnectorSelector("client/1", GeoLocation.ParseOrNull("eu-west"), new FakeTimeProvider()).Location?.Region);
    }

    // ---- Routes ----

    [Fact]
    public void Routes_report_the_connector_in_use_and_those_held_back_per_network()
    {
        var time = new FakeTimeProvider();
        var selector = new ConnectorSelector("client/1", null, time);
        selector.Update(
        [
            new NetworkConnectors("nw_b", [Route("connector/x")]),
            new NetworkConnectors("nw_a", [Route("connector/a"), Route("connector/b"), Route("connector/c")]),
        ]);
        selector.Succeeded("nw_a", "connector/a");
        selector.Failed("nw_a", "connector/b");

        var routes = selector.Routes();
        Assert.Equal(["nw_a", "nw_b"], routes.Select(r => r.Network));
        Assert.Equal("connector/a", routes[0].Connector);
        Assert.Equal(["connector/a", "connector/b", "connector/c"], routes[0].Online);
        Assert.Equal(["connector/b"], routes[0].Failed);
        Assert.Null(routes[1].Connector);
        Assert.Equal(["connector/x"], routes[1].Online);
        Assert.Empty(routes[1].Failed);

        time.Advance(ConnectorSelector.FailureHold);
        Assert.Empty(selector.Routes()[0].Failed);
    }

    [Fact]
    public void Routes_drop_the_connector_in_use_once_it_failed()
    {
        var selector = Selector("client/1", connectors: [Route("connector/a"), Route("connector/b")]);
        selector.Succeeded(Net, "connector/a");
        selector.Failed(Net, "connector/a");
        var route = Assert.Single(selector.Routes());
        Assert.Null(route.Connector);
        Assert.Equal(["connector/a"], route.Failed);
    }

    [Fact]
    public void Routes_follow_the_newest_list()
    {
        var selector = Selector("client/1", connectors: [Route("connector/a")]);
        selector.Update([new NetworkConnectors("nw_other", [Route("connector/b")])]);
        var route = Assert.Single(selector.Routes());
        Assert.Equal("nw_other", route.Network);
        Assert.Equal(["connector/b"], route.Online);
    }

    [Fact]
    public void Routes_are_empty_before_the_first_list()
        => Assert.Empty(new ConnectorSelector("client/1", null, new FakeTimeProvider()).Routes());

    [Fact]
    public async Task Calls_from_many_threads_at_once_do_not_break_the_selector()
    {
        var selector = Selector("client/1", connectors: [Route("connector/a"), Route("connector/b"), Route("connector/c")]);
        var workers = Enumerable.Range(0, 8).Select(w => Task.Run(() =>
        {
            for (var i = 0; i < 500; i++)
            {
                var connector = $"connector/{(char)('a' + ((w + i) % 3))}";
                switch (i % 4)
                {
                    case 0: selector.Succeeded(Net, connector); break;
                    case 1: selector.Failed(Net, connector); break;
                    case 2: Assert.Equal(3, selector.Candidates(Net, Nothing).Count); break;
                    default: selector.Update([new NetworkConnectors(Net, [Route("connector/a", i % 5), Route("connector/b"), Route("connector/c")])]); _ = selector.Routes(); break;
                }
            }
        }, TestContext.Current.CancellationToken)).ToArray();
        await Task.WhenAll(workers).WaitAsync(TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken);
        Assert.Equal(3, selector.Candidates(Net, Nothing).Count);
    }
}
